"""Shared machinery of the generation steps (``python -m rgpt_llava.eval.model_<benchmark>``).

* model loading through :func:`rgpt_llava.model.builder.load_pretrained_model`;
* LLaVA's sharding (``--num-chunks N --chunk-idx K``: :func:`get_chunk`, as ``llava/eval/model_vqa_loader.py``);
* a resumable JSONL answers writer (:class:`AnswerWriter`): ids already in the file are skipped, every answer is
  flushed as soon as it is written, a line cut by a crash at the end of the file is dropped and regenerated;
* prompts with ``conv_templates[--conv-mode]`` (default ``vicuna_v1``);
* FAST inference for many prompts on one image (:func:`generate_same_image`): the image (and every region of every
  prompt) is encoded ONCE, the prompt prefix shared by all prompts (up to the first region placeholder or the first
  differing token) runs ONCE and its KV cache is expanded along the batch for all suffixes, then greedy decoding runs
  batched. :func:`score_candidates` reuses the same cache to score answer candidates (ranking).
* the naive reference path (:func:`generate_naive`): ``model.generate`` on full prompts, batched with left padding.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import OrderedDict
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch

from rgpt_llava.constants import REGION_TOKEN_INDEX
from rgpt_llava.eval.common import EvalInputError, id_key
from rgpt_llava.model.splice import count_images, embed_text, splice
from rgpt_llava.progress import iter_progress
from rgpt_llava.jsonl import read_resumable_jsonl

DEFAULT_CONV_MODE = "vicuna_v1"


# ---------------------------------------------------------------------------------------------------------------------
# sharding (LLaVA's model_vqa_loader.py)
# ---------------------------------------------------------------------------------------------------------------------
def split_list(lst: Sequence, n: int) -> List[Sequence]:
    """Split a list into n (roughly) equal-sized chunks (LLaVA's rule: ceil(len / n) items per chunk)."""
    chunk_size = math.ceil(len(lst) / n) if len(lst) else 1
    return [lst[i:i + chunk_size] for i in range(0, len(lst), chunk_size)]


def get_chunk(lst: Sequence, n: int, k: int) -> Sequence:
    """Chunk ``k`` of ``n`` (empty when the list has fewer than ``n`` chunks' worth of items)."""
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--chunk-idx {k} must be in 0..{n - 1} (--num-chunks {n})")
    chunks = split_list(list(lst), n)
    return chunks[k] if k < len(chunks) else []


# ---------------------------------------------------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------------------------------------------------
def fail(msg: str) -> None:
    raise EvalInputError(msg)


def read_question_file(path: str, what: str = "question file") -> List[dict]:
    """Objects of a JSONL file (or a JSON list); errors name the file and line."""
    if not os.path.isfile(path):
        fail(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{what} {path}, line {e.lineno}: malformed JSON ({e.msg})")
        rows = [(f"{what} {path}, item {i}", o) for i, o in enumerate(data)]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{what} {path}, line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                fail(f"{what} {path}, line {n}: malformed JSON ({e.msg} at column {e.colno})")
    out = []
    for where, obj in rows:
        if not isinstance(obj, dict):
            fail(f"{where}: expected a JSON object")
        if "question_id" not in obj:
            fail(f"{where}: missing field 'question_id'")
        obj = dict(obj)
        obj["_where"] = where
        out.append(obj)
    return out


def read_json_file(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        fail(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            fail(f"{what} {path}, line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})")


def load_image(folder: str, name: Any, where: str):
    from PIL import Image
    if not isinstance(name, str) or not name:
        fail(f"{where}: missing or invalid image file name {name!r}")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        fail(f"{where}: image {name!r} not found in --image-folder {folder}")
    try:
        return Image.open(path).convert("RGB")
    except Exception as e:  # PIL raises assorted errors
        fail(f"{where}: cannot read image {path}: {e}")


# ---------------------------------------------------------------------------------------------------------------------
# resumable answers file
# ---------------------------------------------------------------------------------------------------------------------
class AnswerWriter:
    """Append-only JSONL answers file that knows which ``question_id`` are done (resume after a crash)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            rows = read_resumable_jsonl(path, check=lambda obj: id_key(obj["question_id"]))
        except ValueError as e:
            fail(f"answers file {path}, {e}; fix or delete the file")
        self.done = {id_key(r["question_id"]) for r in rows}
        self.num_written = 0
        self._f = open(path, "a", encoding="utf-8")

    def is_done(self, qid: Any) -> bool:
        return id_key(qid) in self.done

    def write(self, obj: dict) -> None:
        key = id_key(obj["question_id"])
        if key in self.done:
            return
        self._f.write(json.dumps(obj) + "\n")
        self._f.flush()
        self.done.add(key)
        self.num_written += 1

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------------------------------
# CLI, model
# ---------------------------------------------------------------------------------------------------------------------
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-base", default=None)
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--answers-file", required=True)
    ap.add_argument("--conv-mode", default=DEFAULT_CONV_MODE)
    ap.add_argument("--num-chunks", type=int, default=1)
    ap.add_argument("--chunk-idx", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (per image)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--load-4bit", action="store_true")
    ap.add_argument("--load-8bit", action="store_true")
    ap.add_argument("--regions-as-text", action="store_true",
                    help="baseline for plain LLaVA: write each region into the prompt as its box [x1, y1, x2, y2] "
                         "(normalised to the image the model sees) instead of a region token; no masks are passed")
    ap.add_argument("--naive", action="store_true",
                    help="reference path: model.generate per batch of full prompts (no KV-cache reuse)")


def check_chunk_args(args) -> None:
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        fail(f"--chunk-idx {args.chunk_idx} must be in 0..{args.num_chunks - 1} (--num-chunks {args.num_chunks})")


def load_model(args):
    from rgpt_llava.model.builder import load_pretrained_model
    from llava.mm_utils import get_model_name_from_path
    if not os.path.isdir(args.model_path):
        fail(f"--model-path {args.model_path}: no such checkpoint folder")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path),
        load_8bit=args.load_8bit, load_4bit=args.load_4bit, device=args.device)
    model.eval()
    # Batched generation pads on the left (the spliced sequences are re-padded by this setting).
    model.config.tokenizer_padding_side = "left"
    return tokenizer, model, image_processor


def conv_prompt(turns: Sequence[Tuple[str, Optional[str]]], conv_mode: str = DEFAULT_CONV_MODE,
                image: bool = True) -> str:
    """The conversation text: ``turns`` = [(user, assistant or None), ...]; ``<image>\\n`` leads the first turn."""
    from llava.conversation import conv_templates
    if conv_mode not in conv_templates:
        fail(f"--conv-mode {conv_mode!r} is unknown; known: {', '.join(sorted(conv_templates))}")
    conv = conv_templates[conv_mode].copy()
    for i, (q, a) in enumerate(turns):
        conv.append_message(conv.roles[0], ("<image>\n" + q) if (i == 0 and image) else q)
        conv.append_message(conv.roles[1], a)
    return conv.get_prompt()


def image_tensor(model, image_processor, image) -> torch.Tensor:
    from llava.mm_utils import process_images
    return process_images([image], image_processor, model.config)[0].to(model.device, dtype=model.dtype)


def region_masks(regions: Sequence[Any], image, image_processor, model, where: str) -> torch.Tensor:
    from rgpt_llava.geometry import process_regions
    try:
        m = process_regions(list(regions), image.size, image_processor,
                            getattr(model.config, "image_aspect_ratio", "pad"))
    except (ValueError, FileNotFoundError) as e:
        fail(f"{where}: {e}")
    return m.to(model.device, dtype=model.dtype)


def region_prompt(args, model, prompt: str, regions: Sequence[dict], image, where: str) -> str:
    """``prompt`` as the model gets it: unchanged, or with ``--regions-as-text`` each placeholder replaced by its
    region's box text."""
    if not getattr(args, "regions_as_text", False):
        return prompt
    from rgpt_llava.data.text_regions import box_text, replace_regions
    try:
        boxes = []
        for k, r in enumerate(regions):
            if "bbox" not in r:
                raise ValueError(f"region {k + 1} has no 'bbox' (--regions-as-text needs boxes)")
            boxes.append(box_text(r["bbox"], *image.size, getattr(model.config, "image_aspect_ratio", "pad")))
        return replace_regions(prompt, boxes)
    except ValueError as e:
        fail(f"{where}: {e}")


def region_inputs(args, tokenizer, model, image_processor, prompt: str, regions: Sequence[dict], image,
                  where: str) -> Tuple[List[int], Optional[torch.Tensor]]:
    """Token ids and region masks of a prompt about ``regions`` (dicts with ``bbox`` / ``segmentation``).

    With ``--regions-as-text`` the placeholders become the regions' box text and the masks are ``None``.
    """
    ids = tokenize(tokenizer, region_prompt(args, model, prompt, regions, image, where))
    if getattr(args, "regions_as_text", False):
        return ids, None
    return ids, region_masks(regions, image, image_processor, model, where)


def tokenize(tokenizer, prompt: str) -> List[int]:
    from rgpt_llava.mm_utils import tokenizer_region_token
    return tokenizer_region_token(prompt, tokenizer)


def group_by(items: Iterable[dict], key) -> "OrderedDict[Any, List[dict]]":
    out: "OrderedDict[Any, List[dict]]" = OrderedDict()
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def by_image(items: Iterable[dict], key, desc: str):
    """``(image key, items)`` pairs in first-seen order, with a progress bar over the images (on a terminal)."""
    groups = group_by(items, key)
    return iter_progress(groups.items(), desc=desc, total=len(groups))


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def cut_at_eos(ids: Sequence[int], eos: int) -> List[int]:
    ids = [int(t) for t in ids]
    return ids[:ids.index(eos)] if eos in ids else ids


# ---------------------------------------------------------------------------------------------------------------------
# the FAST path: one image, many prompts, shared prefix KV cache
# ---------------------------------------------------------------------------------------------------------------------
def _embed(model, ids: Sequence[int], image_tokens: Optional[torch.Tensor], regions: Optional[torch.Tensor]):
    """Embeddings of ``ids`` with the image tokens at the image sentinel and region k's token at its sentinels
    (:func:`rgpt_llava.model.splice.splice`, the model's own splice)."""
    t = torch.tensor(list(ids), dtype=torch.long, device=model.device)
    emb = embed_text(model.get_model().embed_tokens, t)
    images = [] if image_tokens is None else [image_tokens] * count_images(t)
    return splice(t, emb, images, regions)[0]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs) - 1          # every suffix keeps at least one token
    first = seqs[0]
    i = 0
    while i < n and first[i] > REGION_TOKEN_INDEX and all(s[i] == first[i] for s in seqs[1:]):
        i += 1
    return i


def _expand_cache(past, batch: int, rows: Optional[torch.Tensor] = None):
    if rows is not None:
        return tuple((k[rows], v[rows]) for k, v in past)
    return tuple((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past)


def _lm_step(model, embeds, attention, positions, past):
    # The cache is handled here as legacy (key, value) tuples, which are easy to slice and expand along the batch;
    # transformers >= 4.5x only accepts Cache objects, so convert at the model boundary (DynamicCache exists since
    # 4.36 and round-trips exactly).
    if isinstance(past, tuple):
        from transformers import DynamicCache
        past = DynamicCache.from_legacy_cache(past)
    out = model.get_model()(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                            past_key_values=past, use_cache=True, return_dict=True)
    logits = model.lm_head(out.last_hidden_state).float()
    new_past = out.past_key_values
    if hasattr(new_past, "to_legacy_cache"):
        new_past = new_past.to_legacy_cache()
    return logits, new_past


class SharedPrefix:
    """One image and a batch of prompts on it, prefilled with the prefix run once (see :func:`prefill`)."""

    def __init__(self, past, attention, next_pos, last_logits):
        self.past, self.attention, self.next_pos, self.last_logits = past, attention, next_pos, last_logits


@torch.no_grad()
def prefill(model, image: Optional[torch.Tensor], prompts_ids: Sequence[Sequence[int]],
            masks: Optional[Sequence[Optional[torch.Tensor]]] = None) -> SharedPrefix:
    """Encode ``image`` and all regions once, run the shared prefix once, the suffixes as one batch on its
    expanded KV cache (left-padded between prefix and suffix; explicit positions)."""
    b = len(prompts_ids)
    masks = list(masks) if masks is not None else [None] * b
    image_tokens, region_tokens = None, [None] * b
    if image is not None:
        counts = [0 if m is None else int(m.shape[0]) for m in masks]
        all_masks = [m for m in masks if m is not None and m.shape[0]]
        cat = torch.cat(all_masks) if all_masks else None
        img_tok, reg_tok = model.encode_images_and_regions(image[None], [cat])
        image_tokens = img_tok[0]
        split = list(torch.split(reg_tok[0], counts)) if sum(counts) else [None] * b
        region_tokens = [s if c else None for s, c in zip(split, counts)]
    n = _common_prefix(prompts_ids)
    prefix = _embed(model, prompts_ids[0][:n], image_tokens, None)[None]
    p = prefix.shape[1]
    dev = prefix.device
    past = None
    if p:
        _, past = _lm_step(model, prefix, torch.ones(1, p, dtype=torch.long, device=dev),
                           torch.arange(p, device=dev)[None], None)
    suffixes = [_embed(model, ids[n:], image_tokens, region_tokens[i]) for i, ids in enumerate(prompts_ids)]
    s = max(x.shape[0] for x in suffixes)
    emb = prefix.new_zeros(b, s, prefix.shape[-1])
    attention = torch.zeros(b, p + s, dtype=torch.long, device=dev)
    attention[:, :p] = 1
    positions = torch.zeros(b, s, dtype=torch.long, device=dev)
    for i, x in enumerate(suffixes):
        emb[i, s - x.shape[0]:] = x
        attention[i, p + s - x.shape[0]:] = 1
        positions[i, s - x.shape[0]:] = torch.arange(p, p + x.shape[0], device=dev)
    past_b = _expand_cache(past, b) if past is not None else None
    logits, past = _lm_step(model, emb, attention, positions, past_b)
    next_pos = torch.tensor([p + x.shape[0] for x in suffixes], device=dev)
    return SharedPrefix(past, attention, next_pos, logits[:, -1])


@torch.no_grad()
def greedy_from(model, state: SharedPrefix, max_new_tokens: int, eos_token_id: int) -> List[List[int]]:
    """Greedy decoding (as ``generate(do_sample=False)``) from a prefilled batch; tokens up to (excluding) EOS."""
    b = state.last_logits.shape[0]
    out = [[] for _ in range(b)]
    finished = torch.zeros(b, dtype=torch.bool, device=state.last_logits.device)
    logits, past, attention, pos = state.last_logits, state.past, state.attention, state.next_pos.clone()
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for i in range(b):
            if not finished[i]:
                out[i].append(int(nxt[i]))
        finished |= nxt == eos_token_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, attention.new_ones(b, 1)], dim=1)
        emb = model.get_model().embed_tokens(nxt[:, None])
        step_logits, past = _lm_step(model, emb, attention, pos[:, None], past)
        logits = step_logits[:, -1]
        pos = pos + 1
    return [cut_at_eos(o, eos_token_id) for o in out]


def generate_same_image(model, image: Optional[torch.Tensor], prompts_ids: Sequence[Sequence[int]],
                        masks: Optional[Sequence[Optional[torch.Tensor]]] = None, max_new_tokens: int = 32,
                        eos_token_id: int = 2, batch_size: int = 16) -> List[List[int]]:
    """FAST greedy answers (token ids, EOS cut) of several prompts on the same image, ``batch_size`` at a time."""
    masks = list(masks) if masks is not None else [None] * len(prompts_ids)
    out = []
    for i in range(0, len(prompts_ids), batch_size):
        st = prefill(model, image, prompts_ids[i:i + batch_size], masks[i:i + batch_size])
        out += greedy_from(model, st, max_new_tokens, eos_token_id)
    return out


@torch.no_grad()
def score_candidates(model, image: Optional[torch.Tensor], prompts_ids: Sequence[Sequence[int]],
                     masks: Optional[Sequence[Optional[torch.Tensor]]], candidates: Sequence[Sequence[int]],
                     chunk: int = 64) -> torch.Tensor:
    """``[len(prompts), len(candidates)]`` summed log-probabilities of each candidate continuation (token ids)
    after each prompt: the prefilled cache of each prompt is expanded over the candidates, ``chunk`` at a time."""
    st = prefill(model, image, prompts_ids, masks)
    first_lp = torch.log_softmax(st.last_logits, -1)            # predicts each candidate's first token
    dev = first_lp.device
    res = torch.zeros(len(prompts_ids), len(candidates), dtype=torch.float64)
    for r in range(len(prompts_ids)):
        for c0 in range(0, len(candidates), chunk):
            cands = candidates[c0:c0 + chunk]
            m = len(cands)
            first = torch.tensor([c[0] for c in cands], device=dev)
            total = first_lp[r, first].double()
            longest = max(len(c) for c in cands)
            if longest > 1:
                ids = torch.zeros(m, longest - 1, dtype=torch.long, device=dev)
                valid = torch.zeros(m, longest - 1, dtype=torch.bool, device=dev)
                for j, c in enumerate(cands):
                    ids[j, :len(c) - 1] = torch.tensor(c[:-1], device=dev)
                    valid[j, :len(c) - 1] = True
                att = torch.cat([st.attention[r:r + 1].expand(m, -1), valid.long()], dim=1)
                pos = st.next_pos[r] + torch.arange(longest - 1, device=dev)[None].expand(m, -1)
                past = tuple((k[r:r + 1].expand(m, -1, -1, -1), v[r:r + 1].expand(m, -1, -1, -1))
                             for k, v in st.past)
                logits, _ = _lm_step(model, model.get_model().embed_tokens(ids), att, pos, past)
                lp = torch.log_softmax(logits, -1)
                target = torch.zeros_like(ids)
                for j, c in enumerate(cands):
                    target[j, :len(c) - 1] = torch.tensor(c[1:], device=dev)
                tok = lp.gather(-1, target[..., None])[..., 0].double()
                total = total + (tok * valid).sum(1)
            res[r, c0:c0 + m] = total.cpu()
    return res


# ---------------------------------------------------------------------------------------------------------------------
# the naive reference path
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_naive(model, tokenizer, images: Optional[Sequence[torch.Tensor]], prompts_ids: Sequence[Sequence[int]],
                   masks: Optional[Sequence[Optional[torch.Tensor]]] = None, max_new_tokens: int = 32) -> List[List[int]]:
    """``model.generate(do_sample=False)`` on full prompts as one left-padded batch (images re-encoded per prompt)."""
    b = len(prompts_ids)
    n = max(len(p) for p in prompts_ids)
    ids = torch.zeros(b, n, dtype=torch.long)
    att = torch.zeros(b, n, dtype=torch.long)
    for i, p in enumerate(prompts_ids):
        ids[i, n - len(p):] = torch.tensor(p)
        att[i, n - len(p):] = 1
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    kw = {}
    if images is not None:
        kw["images"] = torch.stack(list(images))
        kw["region_masks"] = list(masks) if masks is not None else None
    out = model.generate(ids.to(model.device), attention_mask=att.to(model.device), do_sample=False,
                         num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                         use_cache=True, return_dict_in_generate=True, output_scores=True, **kw)
    # transformers 4.37 starts the output of an inputs_embeds generation with the BOS it initialises, later versions
    # return only new tokens: what precedes the len(scores) generated steps is not an answer.
    seqs = out.sequences
    start = seqs.shape[1] - len(out.scores)
    return [cut_at_eos(o.tolist()[start:], eos) for o in seqs]


def run_main(main, argv=None) -> int:
    """Input errors: one ``error: ...`` line on stderr, exit status 2 (as the scorers)."""
    try:
        return main(argv)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
