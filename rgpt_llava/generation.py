"""Generation on one image: the image and every region encoded once, the prompt prefix shared by all prompts run
once, the prompts decoded as one batch on its KV cache. Evaluation (``rgpt_llava.eval``), the region-aware CLI and the
servers (``rgpt_llava.serve``) all generate through this module.

* :func:`prefill`: encode the image and all regions once, run the shared prefix (up to the first region placeholder
  or the first differing token) once, expand its KV cache along the batch, run the suffixes as one left-padded batch;
* :class:`BatchDecoder` with a :class:`Sampler`: the one token-by-token loop (greedy, or temperature / top-p with a
  seed); :func:`greedy_from` / :func:`generate_same_image` on top of it;
* :func:`score_candidates`: summed log-probabilities of answer candidates on the same cache (ranking);
* :func:`generate_naive`: the reference path, ``model.generate`` on full prompts (tests and benchmarks compare).
"""
import math
from typing import List, Optional, Sequence

import torch

from rgpt_llava.compat import CACHE_KW, cache_from_legacy, cache_to_legacy, output_cache
from rgpt_llava.constants import REGION_TOKEN_INDEX
from rgpt_llava.model.splice import count_images, embed_text, splice


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


def _common_prefix(seqs: Sequence[Sequence[int]], same_image: bool = True) -> int:
    """Tokens every prompt starts with, up to the first region sentinel (and the image sentinel, unless the prompts
    share one image)."""
    n = min(len(s) for s in seqs) - 1          # every suffix keeps at least one token
    first = seqs[0]
    shared = (lambda t: t > REGION_TOKEN_INDEX) if same_image else (lambda t: t >= 0)  # noqa: E731
    i = 0
    while i < n and shared(first[i]) and all(s[i] == first[i] for s in seqs[1:]):
        i += 1
    return i


def _encode(model, image, masks: List[Optional[torch.Tensor]]):
    """``(image tokens, region tokens)`` per prompt: one image shared by every prompt (encoded once), or a list of
    each prompt's own image (encoded as one batch); all regions pooled in the same call."""
    b = len(masks)
    counts = [0 if m is None else int(m.shape[0]) for m in masks]
    if isinstance(image, (list, tuple)):
        img_tok, reg_tok = model.encode_images_and_regions(torch.stack(list(image)),
                                                           [m if c else None for m, c in zip(masks, counts)])
        return list(img_tok), [r if c else None for r, c in zip(reg_tok, counts)]
    all_masks = [m for m in masks if m is not None and m.shape[0]]
    cat = torch.cat(all_masks) if all_masks else None
    img_tok, reg_tok = model.encode_images_and_regions(image[None], [cat])
    split = list(torch.split(reg_tok[0], counts)) if sum(counts) else [None] * b
    return [img_tok[0]] * b, [s if c else None for s, c in zip(split, counts)]


def input_embeddings(model, image: Optional[torch.Tensor], prompts_ids: Sequence[Sequence[int]],
                     masks: Sequence[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    """Each prompt's input embeddings [L, D] as the model sees them (no KV cache): the image and all regions encoded
    in one call, image tokens at the image sentinel and region k's token at its sentinels. For an engine that runs
    the LLM elsewhere (vLLM's ``prompt_embeds``)."""
    with torch.inference_mode():
        if image is None:
            return [_embed(model, ids, None, None) for ids in prompts_ids]
        image_tokens, region_tokens = _encode(model, image, list(masks))
        return [_embed(model, ids, i, r) for ids, i, r in zip(prompts_ids, image_tokens, region_tokens)]


def _expand_cache(past, batch: int):
    return tuple((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past)


def _lm_step(model, embeds, attention, positions, past):
    # The cache is handled here as legacy (key, value) tuples, which are easy to slice and expand along the batch;
    # transformers >= 4.5x only accepts Cache objects, so convert at the model boundary (rgpt_llava.compat).
    if isinstance(past, tuple):
        past = cache_from_legacy(past)
    out = model.get_model()(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                            use_cache=True, return_dict=True, **{CACHE_KW: past})
    logits = model.lm_head(out.last_hidden_state).float()
    return logits, cache_to_legacy(output_cache(out))


class SharedPrefix:
    """One image and a batch of prompts on it, prefilled with the prefix run once (see :func:`prefill`)."""

    def __init__(self, past, attention, next_pos, last_logits):
        self.past, self.attention, self.next_pos, self.last_logits = past, attention, next_pos, last_logits


@torch.no_grad()
def prefill(model, image, prompts_ids: Sequence[Sequence[int]],
            masks: Optional[Sequence[Optional[torch.Tensor]]] = None) -> SharedPrefix:
    """Encode the image(s) and all regions once, run the shared prefix once, the suffixes as one batch on its
    expanded KV cache (left-padded between prefix and suffix; explicit positions). ``image``: one tensor [3, H, W]
    that every prompt is about, a list of each prompt's own (RecapD's crops: the prefix ends before the image), or
    None."""
    b = len(prompts_ids)
    masks = list(masks) if masks is not None else [None] * b
    image_tokens, region_tokens = [None] * b, [None] * b
    if image is not None:
        image_tokens, region_tokens = _encode(model, image, masks)
    n = _common_prefix(prompts_ids, same_image=not isinstance(image, (list, tuple)))
    prefix = _embed(model, prompts_ids[0][:n], image_tokens[0], None)[None]
    p = prefix.shape[1]
    dev = prefix.device
    past = None
    if p:
        _, past = _lm_step(model, prefix, torch.ones(1, p, dtype=torch.long, device=dev),
                           torch.arange(p, device=dev)[None], None)
    suffixes = [_embed(model, ids[n:], image_tokens[i], region_tokens[i]) for i, ids in enumerate(prompts_ids)]
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


class Sampler:
    """How each row's next token is chosen: greedy (``temperature`` 0, as ``generate(do_sample=False)``), or drawn
    from the softmax at ``temperature`` restricted to the smallest set of tokens whose probability reaches ``top_p``
    (nucleus sampling, as transformers' ``TopPLogitsWarper``), from a generator seeded with ``seed`` (None: a fresh
    seed), so one seed gives one answer."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None):
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), seed
        self._generator = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [B, V] -> next tokens [B]."""
        if self.greedy:
            return logits.argmax(-1)
        if self._generator is None:
            self._generator = torch.Generator(device=logits.device)
            if self.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(int(self.seed))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p   # the mass before a token; the first always stays
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
        return torch.multinomial(probs, 1, generator=self._generator)[:, 0]


GREEDY = Sampler()


class BatchDecoder:
    """Token-by-token decoding of a prefilled batch (:func:`prefill`) on its KV cache: :meth:`choose` picks each
    row's next token from the current logits, :meth:`advance` feeds the chosen tokens. Callers mark rows
    ``finished`` (EOS, a stop string, a client gone); finished rows keep being fed (the batch stays rectangular) and
    their tokens are ignored. The one decoding loop of evaluation (:func:`greedy_from`) and of serving."""

    def __init__(self, model, state: SharedPrefix, sampler: Sampler = GREEDY):
        self.model, self.sampler = model, sampler
        self.logits, self.past = state.last_logits, state.past
        self.attention, self.positions = state.attention, state.next_pos.clone()
        self.batch = state.last_logits.shape[0]
        self.finished = [False] * self.batch

    @property
    def done(self) -> bool:
        return all(self.finished)

    def choose(self) -> List[int]:
        return self.sampler(self.logits).tolist()

    @torch.no_grad()
    def advance(self, tokens: Sequence[int]) -> None:
        nxt = torch.tensor(list(tokens), dtype=torch.long, device=self.logits.device)
        self.attention = torch.cat([self.attention, self.attention.new_ones(self.batch, 1)], dim=1)
        emb = self.model.get_model().embed_tokens(nxt[:, None])
        step_logits, self.past = _lm_step(self.model, emb, self.attention, self.positions[:, None], self.past)
        self.logits = step_logits[:, -1]
        self.positions = self.positions + 1


@torch.no_grad()
def greedy_from(model, state: SharedPrefix, max_new_tokens: int, eos_token_id: int) -> List[List[int]]:
    """Greedy decoding (as ``generate(do_sample=False)``) from a prefilled batch; tokens up to (excluding) EOS."""
    decoder = BatchDecoder(model, state)
    out = [[] for _ in range(decoder.batch)]
    for step in range(max_new_tokens):
        tokens = decoder.choose()
        for i, t in enumerate(tokens):
            if not decoder.finished[i]:
                out[i].append(t)
                decoder.finished[i] = t == eos_token_id
        if decoder.done or step == max_new_tokens - 1:
            break
        decoder.advance(tokens)
    return [cut_at_eos(o, eos_token_id) for o in out]


def generate_same_image(model, image, prompts_ids: Sequence[Sequence[int]],
                        masks: Optional[Sequence[Optional[torch.Tensor]]] = None, max_new_tokens: int = 32,
                        eos_token_id: int = 2, batch_size: int = 16) -> List[List[int]]:
    """FAST greedy answers (token ids, EOS cut) of several prompts on the same image (or a list of each prompt's
    own, see :func:`prefill`), ``batch_size`` at a time."""
    masks = list(masks) if masks is not None else [None] * len(prompts_ids)
    per_prompt = isinstance(image, (list, tuple))
    out = []
    for i in range(0, len(prompts_ids), batch_size):
        st = prefill(model, image[i:i + batch_size] if per_prompt else image, prompts_ids[i:i + batch_size],
                     masks[i:i + batch_size])
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
                   masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
                   max_new_tokens: int = 32) -> List[List[int]]:
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
