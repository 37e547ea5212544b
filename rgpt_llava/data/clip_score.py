"""CLIP image-text similarity for the RecapD filter (paper Sec. 3.3), with captions longer than CLIP's text window.

``ClipScorer(path)`` loads ``CLIPModel`` + its image processor + tokenizer from a local folder. The score of a
(region crop, caption) pair is the cosine similarity of CLIP's projected, L2-normalised image and text embeddings
(a number in [-1, 1]; no x100 / x2.5 rescaling).

Long captions: CLIP's text encoder reads at most ``max_position_embeddings`` tokens (77, BOS and EOS included), and a
detailed region caption is ~90 words. Instead of silently truncating (which would score only the first sentence or
two), the caption is split into sentences, the sentences are packed greedily, in order, into chunks that each fit the
window (a single sentence that does not fit alone is split at word boundaries, and a word that does not fit alone is
truncated by the tokenizer); every chunk is embedded, the normalised chunk embeddings are averaged and the mean is
normalised again. The score is the cosine of that mean text embedding with the image embedding. ``chunk_caption``
is the splitting rule, exposed for tests; ``score`` returns the number of chunks used per caption as well.
"""
from __future__ import annotations

import json
import os
import re
from typing import List, Sequence, Tuple

import torch

_SENTENCE = re.compile(r"(?<=[.!?;])\s+")


def chunk_caption(caption: str, count_tokens, limit: int) -> List[str]:
    """``caption`` as sentence chunks of at most ``limit`` tokens each (``count_tokens(text)`` counts a chunk's tokens
    without BOS / EOS). Sentences stay whole where they fit; an oversized sentence is split at word boundaries."""
    pieces: List[str] = []
    for sentence in (s.strip() for s in _SENTENCE.split(" ".join(caption.split()))):
        if not sentence:
            continue
        if count_tokens(sentence) <= limit:
            pieces.append(sentence)
            continue
        words, cur = sentence.split(" "), []
        for w in words:
            if cur and count_tokens(" ".join(cur + [w])) > limit:
                pieces.append(" ".join(cur))
                cur = []
            cur.append(w)
        if cur:
            pieces.append(" ".join(cur))
    chunks: List[str] = []
    for piece in pieces:
        if chunks and count_tokens(chunks[-1] + " " + piece) <= limit:
            chunks[-1] = chunks[-1] + " " + piece
        else:
            chunks.append(piece)
    return chunks or [""]


class ClipScorer:
    """``scorer(images, captions) -> [float]``: CLIP cosine similarity of each crop with its (chunked) caption."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        if not os.path.isdir(path):
            raise ValueError(f"--clip-model {path}: no such folder (a CLIPModel saved with save_pretrained)")
        self.device = device
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.model = CLIPModel.from_pretrained(path, torch_dtype=dtype).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_len = int(self.model.config.text_config.max_position_embeddings)
        self.last_chunks: List[int] = []

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def __call__(self, images: Sequence, captions: Sequence[str]) -> List[float]:
        scores, self.last_chunks = self.score(images, captions)
        return scores

    @torch.no_grad()
    def score(self, images: Sequence, captions: Sequence[str]) -> Tuple[List[float], List[int]]:
        if not images:
            return [], []
        pix = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        img = _features(self.model.get_image_features(pixel_values=pix.to(self.device, self.model.dtype))).float()
        img = torch.nn.functional.normalize(img, dim=-1)
        chunks = [chunk_caption(c, self.count_tokens, self.max_len - 2) for c in captions]
        flat = [c for cs in chunks for c in cs]
        tok = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        txt = _features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                     attention_mask=tok["attention_mask"].to(self.device))).float()
        txt = torch.nn.functional.normalize(txt, dim=-1)
        scores, i = [], 0
        for k, cs in enumerate(chunks):
            mean = torch.nn.functional.normalize(txt[i:i + len(cs)].mean(0), dim=-1)
            i += len(cs)
            scores.append(float(mean @ img[k]))
        return scores, [len(cs) for cs in chunks]


# ----------------------------------------------------------------------------------------------------------------------
# A tiny random CLIPModel with a character-level CLIP tokenizer, built offline (tests and demos)
def _features(out):
    """``get_*_features`` return the projected embeddings (transformers 4.x) or an output holding them as
    ``pooler_output`` (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def bytes_to_unicode() -> dict:
    """GPT-2's (and CLIP's) map of the 256 bytes to printable characters (transformers 5 no longer exports it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# ----------------------------------------------------------------------------------------------------------------------
def build_tiny_clip_model(out_dir, image_size: int = 32, patch_size: int = 16, hidden: int = 32, seed: int = 0) -> str:
    """A random ``CLIPModel`` + ``CLIPImageProcessor`` + ``CLIPTokenizer`` in ``out_dir``. The tokenizer's vocabulary
    is the 256 byte symbols of CLIP's byte-level BPE, each also with the end-of-word marker ``</w>``, and no merges:
    every character is one token, so any sentence of more than ~75 characters exceeds the 77-token window."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    os.makedirs(out_dir, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[s] = len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(out_dir)  # reads vocab.json and merges.txt (transformers 4.x and 5.x)
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=hidden)
    CLIPModel(cfg).save_pretrained(out_dir)
    from rgpt_llava.tiny import CLIP_MEAN, CLIP_STD
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir)
    return str(out_dir)
