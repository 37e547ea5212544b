"""The one generation core of the interactive entry points: the CLI's chat, ``describe``, the model worker, the
OpenAI-style API and the web page all answer through :class:`RegionEngine` (image + parsed regions + prompt ->
:meth:`RegionEngine.prepare` -> :meth:`RegionEngine.generate`).

A request is checked completely by :meth:`RegionEngine.prepare` (image, regions, placeholders, context length) before
anything is generated, so a server can answer a bad one with a 4xx instead of a broken stream. :meth:`generate` then
runs :mod:`rgpt_llava.generation`: the image and every region encoded once, the prompts' shared prefix run once, the
prompts (several choices, or one question per region) decoded as one batch with temperature / top-p / seed, stop
strings and EOS, streamed as text deltas. Stopping the iteration (a client gone) stops the computation.
"""
import asyncio
import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from rgpt_llava import generation
from rgpt_llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from rgpt_llava.geometry import Region, process_regions
from rgpt_llava.mm_utils import check_region_references, tokenizer_region_token
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError


_END = object()


async def run_on(executor, fn, *args):
    """``fn(*args)`` on ``executor`` (None: the event loop's default pool), awaited."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def iterate_on(executor, items) -> AsyncIterator:
    """A blocking iterator advanced on ``executor``, one item at a time. When the consumer stops (a client gone),
    nothing more is computed, and the iterator is closed. An async iterator (vLLM's engine streams) is consumed as it
    is, and likewise closed."""
    if hasattr(items, "__aiter__"):
        try:
            async for item in items:
                yield item
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
        return
    try:
        while True:
            item = await run_on(executor, next, items, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            await run_on(executor, close)


def model_name_of(model_path: str) -> str:
    """The name a served model is listed and asked for by (LLaVA's rule: the folder's name, ``parent_checkpoint-N``
    for an intermediate checkpoint). Only a label: what the model is comes from its config.json."""
    parts = [p for p in model_path.replace("\\", "/").split("/") if p]
    if not parts:
        return "rgpt"
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


@dataclass
class Sampling:
    """LLaVA's generation parameters (its worker's names), a seed, and ``ignore_eos`` (vLLM's name: answers of exactly
    ``max_new_tokens`` tokens, for benchmarks and tests that need a known length)."""
    temperature: float = 0.2
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: Tuple[str, ...] = ()
    seed: Optional[int] = None
    ignore_eos: bool = False

    def sampler(self) -> generation.Sampler:
        return generation.Sampler(self.temperature, self.top_p, self.seed)


@dataclass
class Job:
    """A checked request: prompts (token ids with sentinels) on one image, each with its region masks."""
    image: Optional[torch.Tensor]
    prompts: List[List[int]]
    masks: List[Optional[torch.Tensor]]
    prompt_tokens: List[int]             # each prompt's length as the LLM sees it (image tokens included)
    max_new_tokens: int                  # the request's, cut to what the context leaves
    sampling: Sampling


@dataclass
class Delta:
    """New text of one choice (prompt row); ``finish_reason`` "stop" (EOS or a stop string) or "length" at its end;
    ``completion_tokens``: tokens generated for it so far (its EOS included)."""
    index: int
    text: str
    finish_reason: Optional[str] = None
    completion_tokens: int = 0


@dataclass
class ChoiceText:
    """One choice's tokens and the text already sent; holds back a tail that may be the start of a stop string."""
    tokenizer: object
    stops: Tuple[str, ...]
    special: frozenset = frozenset()    # the tokenizer's special ids, dropped from the text
    byte_ids: frozenset = frozenset()   # byte-fallback ids whose text may still change (see _unstable)
    tokens: List[int] = field(default_factory=list)
    sent: int = 0

    def _decode(self, tokens) -> str:
        # == decode(tokens, skip_special_tokens=True), at half the cost: transformers' slow tokenizers rebuild their
        # special-token list for every token they skip-check
        return self.tokenizer.decode([t for t in tokens if t not in self.special], skip_special_tokens=False)

    def text(self) -> str:
        return self._decode(self.tokens)

    def _unstable(self, text: str) -> int:
        """Characters at the end decoded from a trailing run of byte-fallback tokens. transformers 5's tokenizers
        decode a run of bytes that is not valid UTF-8 as one U+FFFD per byte, valid bytes too, so a later byte can
        still change them: they are neither sent nor searched for stop strings until the run ends."""
        n = 0
        while n < len(self.tokens) and self.tokens[-1 - n] in self.byte_ids:
            n += 1
        return len(text) - len(self._decode(self.tokens[:-n])) if n else 0

    def push(self, token: int, eos: int) -> Tuple[str, Optional[str]]:
        if token == eos:
            return self.flush(), "stop"
        self.tokens.append(token)
        return self._emit(final=False)

    def _emit(self, final: bool) -> Tuple[str, Optional[str]]:
        text = self.text()
        stable = text if final else text[:len(text) - self._unstable(text)]
        cut = min((i for i in (stable.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            delta, self.sent = text[self.sent:cut], cut
            return delta, "stop"
        safe = len(stable) if final else len(stable) - self._held(stable)
        delta = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta, None

    def _held(self, text: str) -> int:
        """Characters at the end to hold back: an incomplete UTF-8 character (byte-fallback pieces decode to one
        U+FFFD per byte until the character is complete), or the longest tail that a stop string starts with."""
        partial = len(text) - len(text.rstrip("\ufffd"))
        stop = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
                   default=0)
        return max(partial, stop)

    def flush(self) -> str:
        """The rest of the text (up to a stop string that only the complete text shows)."""
        return self._emit(final=True)[0]


class ProcessedImages:
    """The last ``capacity`` images' processed tensors, found by content: a chat re-sends its image with every turn,
    and many questions come about the regions of one photo (the API's per-region requests, a batch file). Processing
    one (LLaVA's pad, resize, normalise) costs ~7 ms of CPU at 336 px; hashing its pixels ~1 ms. Thread-safe (servers
    prepare requests on several threads)."""

    def __init__(self, capacity: int = 8):
        self.capacity, self.items, self.lock = capacity, OrderedDict(), threading.Lock()

    def get(self, image: Image.Image, process) -> torch.Tensor:
        key = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
        value = process(image)
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
        return value


class RegionEngine:
    """A loaded model with its tokenizer and image processor (``load_pretrained_model``'s four values)."""

    def __init__(self, tokenizer, model, image_processor, context_len: Optional[int] = None,
                 max_regions: int = MAX_REGIONS, name: str = "rgpt"):
        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        self.context_len = context_len or getattr(model.config, "max_position_embeddings", 2048)
        self.max_regions, self.name = max_regions, name
        self.sam = None        # a rgpt_llava.sam.SamPrompter: turns points / scribbles / snapped boxes into masks
        self.aspect = getattr(model.config, "image_aspect_ratio", "pad")
        self.map_size = model.region_map_size()   # masks are made at the refined map's size, pooled as they are
        h, w = model.merge_size()
        self.image_tokens = h * w
        self.special_ids = frozenset(tokenizer.all_special_ids)
        # a tokenizers-backed tokenizer (transformers 5's own, for a vocabulary without tokenizer.model): byte-fallback
        # pieces "<0xNN>", whose decoded text is not final while their run lasts; SentencePiece decoding (LLaVA-1.5's
        # tokenizer, rgpt_llava.tokenization) is final at once (its partial characters are held anyway)
        self.byte_ids = frozenset() if hasattr(tokenizer, "sp_model") else frozenset(
            i for t, i in tokenizer.get_vocab().items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">"))
        self.processed_images = ProcessedImages()
        # Servers run every model call on this one thread: requests interleave step by step, and torch keeps one
        # pool of compute threads (a thread pool's many threads each bring their own and fight over the cores: a
        # one-region request took 50 ms instead of 28 on 2 cores).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rgpt-model")

    @classmethod
    def load(cls, model_path: str, model_base: Optional[str] = None, device: Optional[str] = None,
             load_8bit: bool = False, load_4bit: bool = False, sam_model: Optional[str] = None,
             **kwargs) -> "RegionEngine":
        from rgpt_llava.model.builder import load_pretrained_model
        from rgpt_llava.sam import SamPrompter
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        sam = SamPrompter(sam_model, device) if sam_model else None    # first: a wrong path fails in seconds
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path, model_base, None, load_8bit=load_8bit, load_4bit=load_4bit, device=device)
        # batched decoding pads on the left (generation re-pads the spliced sequences by this setting)
        model.config.tokenizer_padding_side = "left"
        engine = cls(tokenizer, model, image_processor, context_len, **kwargs)
        engine.sam = sam
        return engine

    # ---- checking ------------------------------------------------------------------------------------------------
    def tokenize(self, prompt: str, num_regions: int, has_image: bool, param: str = "prompt",
                 require_all_regions: bool = True) -> List[int]:
        """Token ids with image / region sentinels; every placeholder names a supplied region and (by default) every
        supplied region is referenced (a region nobody asks about is a client's mistake worth a message)."""
        try:
            check_region_references(prompt, num_regions, require_all=require_all_regions)
        except ValueError as e:
            raise InputError(str(e), param) from None
        n_images = prompt.count(DEFAULT_IMAGE_TOKEN)
        if has_image and n_images != 1:
            raise InputError(f"the prompt must hold exactly one {DEFAULT_IMAGE_TOKEN} for the one image, "
                             f"found {n_images}", param)
        if not has_image and n_images:
            raise InputError(f"the prompt has {DEFAULT_IMAGE_TOKEN} but no image was given", param)
        return tokenizer_region_token(prompt, self.tokenizer)

    def spliced_length(self, ids: Sequence[int]) -> int:
        images = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
        return len(ids) + images * (self.image_tokens - 1)

    def process_image(self, image: Image.Image) -> torch.Tensor:
        """LLaVA's preprocessing (``process_images``: the checkpoint's aspect rule, the tower's processor), on the
        model's device and dtype. Read-only for every job that shares it."""
        from llava.mm_utils import process_images
        return process_images([image], self.image_processor, self.model.config)[0].to(self.model.device,
                                                                                      dtype=self.model.dtype)

    def prepare(self, image: Optional[Image.Image], items: Sequence[Tuple[str, Sequence[Region]]],
                sampling: Sampling, param: str = "prompt", require_all_regions: bool = True) -> Job:
        """``items``: (prompt text, its regions) per choice, all on ``image`` (already EXIF-oriented, RGB). A chat
        whose earlier turns asked about some regions only passes ``require_all_regions=False``."""
        if not items:
            raise InputError("nothing to answer", param)
        if sampling.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}", "max_new_tokens")
        try:
            sampling.sampler()
        except ValueError as e:
            raise InputError(str(e), "temperature" if "temperature" in str(e) else "top_p") from None
        any_regions = any(len(regions) for _, regions in items)
        if any_regions and image is None:
            raise InputError("regions were given without an image: a region is a part of an image", param)
        for _, regions in items:
            if len(regions) > self.max_regions:
                raise InputError(f"{len(regions)} regions; the limit is {self.max_regions} (--max-regions)", param)
        image_t = None
        if image is not None:
            image_t = self.processed_images.get(image, self.process_image)
        # Choices often share their text (n samples, or per-region questions): tokenise each text once. All regions
        # of all choices go through the geometry in one call (the image's resize operators are built once).
        ids_of = {}
        prompts, lengths = [], []
        for prompt, regions in items:
            if (prompt, len(regions)) not in ids_of:
                ids_of[prompt, len(regions)] = self.tokenize(prompt, len(regions), image is not None, param,
                                                             require_all_regions)
            prompts.append(ids_of[prompt, len(regions)])
            lengths.append(self.spliced_length(prompts[-1]))
        counts = [len(regions) for _, regions in items]
        masks = [None] * len(items)
        if sum(counts):
            try:
                everything = process_regions([r for _, regions in items for r in regions], image.size,
                                             self.image_processor, self.aspect, map_size=self.map_size)
            except ValueError as e:
                raise InputError(str(e), param) from None
            everything = everything.to(self.model.device, dtype=self.model.dtype)
            masks = [m if c else None for m, c in zip(torch.split(everything, counts), counts)]
        room = self.context_len - max(lengths)
        if room < 1:
            raise InputError(f"the prompt is {max(lengths)} tokens long (with {self.image_tokens} image tokens); the "
                             f"model's context is {self.context_len}", param)
        return Job(image_t, prompts, masks, lengths, min(sampling.max_new_tokens, room), sampling)

    # ---- generating ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, job: Job, stream: bool = True) -> Iterator[List[Delta]]:
        """Yields, after each decoding step, the choices' new text (only choices with news). With ``stream=False``
        and no stop strings the text is decoded once per choice, at its end (decoding after every step is most of
        the cost of a batch of short answers on a small model)."""
        state = generation.prefill(self.model, job.image, job.prompts, job.masks)
        decoder = generation.BatchDecoder(self.model, state, job.sampling.sampler())
        stops = tuple(s for s in job.sampling.stop if s)
        incremental = stream or bool(stops)
        rows = [ChoiceText(self.tokenizer, stops, self.special_ids, self.byte_ids) for _ in job.prompts]
        eos = None if job.sampling.ignore_eos else self.tokenizer.eos_token_id
        for step in range(job.max_new_tokens):
            tokens = decoder.choose()
            last = step == job.max_new_tokens - 1
            out = []
            for i, token in enumerate(tokens):
                if decoder.finished[i]:
                    continue
                if incremental:
                    delta, reason = rows[i].push(token, eos)
                elif token == eos:
                    delta, reason = rows[i].flush(), "stop"
                else:
                    rows[i].tokens.append(token)
                    delta, reason = "", None
                if reason is None and last:
                    delta, reason = delta + rows[i].flush(), "length"
                if reason is not None:
                    decoder.finished[i] = True
                if delta or reason:
                    out.append(Delta(i, delta, reason, step + 1))
            if out:
                yield out
            if decoder.done:
                return
            decoder.advance(tokens)

    def answer(self, job: Job) -> List[str]:
        """Every choice's whole answer."""
        texts = [""] * len(job.prompts)
        for deltas in self.generate(job, stream=False):
            for d in deltas:
                texts[d.index] += d.text
        return texts

    def answer_many_deltas(self, jobs: Sequence[Job]) -> List[List[Delta]]:
        """Every choice of every job as one final :class:`Delta` (whole text, finish reason, token count): one job
        after another here; vLLM's engine takes them all at once."""
        out = []
        for job in jobs:
            whole = [Delta(i, "") for i in range(len(job.prompts))]
            for deltas in self.generate(job, stream=False):
                for d in deltas:
                    w = whole[d.index]
                    w.text += d.text
                    w.finish_reason = d.finish_reason or w.finish_reason
                    w.completion_tokens = d.completion_tokens
            out.append(whole)
        return out

    def answer_many(self, jobs: Sequence[Job]) -> List[List[str]]:
        """Each job's choices' answers (:meth:`answer` for many jobs)."""
        return [[d.text for d in deltas] for deltas in self.answer_many_deltas(jobs)]
