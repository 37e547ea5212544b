"""The serving engine's interface with vLLM generating: :class:`VLLMRegionEngine`.

It IS a :class:`rgpt_llava.serve.engine.RegionEngine` for everything before generation: ``prepare`` (the same checks,
the same 4xx :class:`~rgpt_llava.serve.inputs.InputError`, the same token ids and region masks) and the answer's text
(the same stop-string and byte-fallback handling, ``ChoiceText``). Only generation differs, by one of two paths (PATHS):

- "multimodal" (the default): the request goes to vLLM as ids plus the processed image and its region masks; RGPT's
  vision side runs inside vLLM (:mod:`rgpt_llava.vllm.multimodal`), where the scheduler batches it across requests
  and caches its outputs;
- "embeds": the package's vision side and its one splice make each prompt's input embeddings here, and vLLM's Llama
  on the same checkpoint (:mod:`rgpt_llava.vllm.model`) decodes them (``prompt_embeds``).

:meth:`VLLMRegionEngine.answer_many` hands many requests to vLLM at once, which is where its continuous batching pays.
vLLM starts its engine core in a spawned process: a script that loads this engine needs the
``if __name__ == "__main__":`` guard.
"""
import asyncio
import uuid
from typing import AsyncIterator, Iterator, List, Optional, Sequence

import torch

from rgpt_llava.constants import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from rgpt_llava import generation
from rgpt_llava.serve.engine import Delta, Job, RegionEngine, ChoiceText
from rgpt_llava.serve.inputs import InputError

# vLLM's settings that make its answers equal the HF engine's on a CPU: the checkpoint's fp32, no graph capture.
EXACT_OPTIONS = {"dtype": "float32", "enforce_eager": True}


# How requests reach vLLM: "multimodal": ids and the processed image with its regions, the vision side inside vLLM
# (rgpt_llava.vllm.multimodal); "embeds": input embeddings spliced here, vLLM runs the LLM (rgpt_llava.vllm.model).
PATHS = ("multimodal", "embeds")


def llm_settings(model_path: str, context_len: int, path: str = "multimodal", **options) -> dict:
    """vLLM's engine arguments for the checkpoint (``vllm.LLM`` and ``AsyncEngineArgs`` take the same). vLLM neither
    tokenises nor detokenises (``skip_tokenizer_init``): this package's tokenizer does both, so ids and text are
    LLaVA-1.5's on every stack (rgpt_llava.tokenization)."""
    from rgpt_llava.vllm.plugin import MULTIMODAL_ARCHITECTURE
    settings = dict(EXACT_OPTIONS, model=model_path, skip_tokenizer_init=True, max_model_len=context_len, seed=0)
    if path == "multimodal":
        # the item arrives processed (a dict of tensors): vLLM calls that "embeddings" input and wants it allowed
        settings.update(hf_overrides={"architectures": [MULTIMODAL_ARCHITECTURE]}, enable_mm_embeds=True)
    elif path == "embeds":
        settings.update(enable_prompt_embeds=True)
    else:
        raise ValueError(f"path {path!r}: expected one of {PATHS}")
    settings.update(options)
    return settings


def multimodal_request(job: Job, index: int, image_tokens: int, map_size) -> dict:
    """Choice ``index`` of ``job`` as vLLM's input to the multimodal model: the ids with each sentinel replaced by
    placeholders (the image's by ``image_tokens`` of them), and the items saying which row of [image tokens; region
    tokens] each placeholder gets: the image item (the image's tokens; the same for every request on the image, so
    vLLM's prefix cache reuses it) and the regions item (rgpt_llava.vllm.multimodal)."""
    from rgpt_llava.vllm.multimodal import PLACEHOLDER_ID, batch_items, image_item, regions_item
    prompt, image_at, region_positions, region_rows = [], None, [], []
    for t in job.prompts[index]:
        if t == IMAGE_TOKEN_INDEX:
            image_at = len(prompt)
            prompt += [PLACEHOLDER_ID] * image_tokens
        elif t <= REGION_TOKEN_INDEX:
            region_positions.append(len(prompt))
            region_rows.append(image_tokens + REGION_TOKEN_INDEX - t)    # region k's token follows the image tokens
            prompt.append(PLACEHOLDER_ID)
        else:
            prompt.append(t)
    if job.image is None:
        return {"prompt_token_ids": prompt}
    pixels = job.image.cpu()
    masks = job.masks[index]
    masks = masks.cpu() if masks is not None else pixels.new_zeros((0,) + tuple(map_size))
    if image_at is None or (region_positions and min(region_positions) < image_at):
        # not the prompt builder's form (regions before the image): one item over both, as the splice places them
        positions = ([] if image_at is None else list(range(image_at, image_at + image_tokens))) + region_positions
        rows = ([] if image_at is None else list(range(image_tokens))) + region_rows
        order = sorted(range(len(positions)), key=positions.__getitem__)
        items = [regions_item(pixels, masks, [positions[i] for i in order], [rows[i] for i in order])]
    else:
        items = [image_item(pixels, image_tokens, image_at)]
        if region_positions:
            items.append(regions_item(pixels, masks, region_positions, region_rows))
    return {"prompt_token_ids": prompt, "multi_modal_data": {"image": batch_items(items)}}


def spliced_embeddings(model, job: Job) -> List[torch.Tensor]:
    """Each prompt's input embeddings [L, D] as the HF model sees them (rgpt_llava.generation, the one splice)."""
    return [e.cpu() for e in generation.input_embeddings(model, job.image, job.prompts, job.masks)]


class _Choice:
    """One choice's generated ids turned into text as the HF engine's loop does (``RegionEngine.generate``): EOS ends
    it ("stop"), a stop string cuts it ("stop"; vLLM, without a tokenizer, cannot see them), the length limit
    ("length"). Fed as vLLM hands the ids over: all at once, or a few per step."""

    def __init__(self, engine: RegionEngine, job: Job, index: int):
        self.row = ChoiceText(engine.tokenizer, tuple(s for s in job.sampling.stop if s), engine.special_ids,
                        engine.byte_ids)
        self.eos = None if job.sampling.ignore_eos else engine.tokenizer.eos_token_id
        self.limit, self.index = job.max_new_tokens, index
        self.steps, self.done = 0, False

    def feed(self, tokens: Sequence[int]) -> Optional[Delta]:
        """New text from new ids (None when there is none yet); after a Delta with a finish reason, nothing."""
        text = ""
        for token in tokens:
            if self.done:
                break
            self.steps += 1
            delta, reason = self.row.push(int(token), self.eos)
            if reason is None and self.steps == self.limit:
                delta, reason = delta + self.row.flush(), "length"
            text += delta
            if reason is not None:
                self.done = True
                return Delta(self.index, text, reason, self.steps)
        return Delta(self.index, text, None, self.steps) if text else None

    def end(self) -> Optional[Delta]:
        """vLLM finished the choice before it finished here (its own length limit): the rest, "length"."""
        if self.done:
            return None
        self.done = True
        return Delta(self.index, self.row.flush(), "length", self.steps)

    def whole(self, tokens: Sequence[int]) -> Delta:
        """The whole answer from all its ids."""
        first = self.feed(tokens)
        if first is not None and first.finish_reason is not None:
            return first
        rest = self.end()
        return Delta(self.index, (first.text if first else "") + rest.text, rest.finish_reason, self.steps)


class VLLMRegionEngine(RegionEngine):
    """A :class:`RegionEngine` whose LLM runs in vLLM (``llm``: a ``vllm.LLM`` on the same checkpoint)."""

    llm = None                # vllm.LLM (AsyncVLLMRegionEngine: vLLM's AsyncLLM)
    path = "multimodal"

    @classmethod
    def load(cls, model_path: str, model_base: Optional[str] = None, device: Optional[str] = "cpu",
             sam_model: Optional[str] = None, path: str = "multimodal", vllm_options: Optional[dict] = None,
             **kwargs) -> "VLLMRegionEngine":
        """The HF engine's loading for the checks (image processor, region geometry) and the tokenizer, then vLLM on
        the checkpoint (``path``: see :data:`PATHS`). ``vllm_options``: more ``vllm.LLM`` arguments
        (``tensor_parallel_size``, ``gpu_memory_utilization``, ...)."""
        from rgpt_llava.model.builder import CheckpointError, describe_checkpoint
        kind = describe_checkpoint(model_path)
        if model_base is not None or kind != "full":
            # vLLM reads one folder of weights: a LoRA or stage-1 checkpoint needs merging first
            raise CheckpointError(f"{model_path}: a {kind} checkpoint; vLLM serves full checkpoints "
                                  f"(merge it: python -m rgpt_llava.merge_lora)")
        engine = super().load(model_path, device=device, sam_model=sam_model, **kwargs)
        # The HF copy of the LLM would only hold memory: vLLM decodes. The vision side and the token embeddings (the
        # splice embeds the text) stay.
        engine.model.get_model().layers = torch.nn.ModuleList()
        engine.model.lm_head = torch.nn.Identity()
        # LLaVA's builder reports 2048 whatever the model; vLLM refuses a context past the model's positions
        positions = getattr(engine.model.config, "max_position_embeddings", None)
        engine.context_len = min(engine.context_len, positions or engine.context_len)
        engine.path = path
        engine.llm = cls._start(llm_settings(model_path, engine.context_len, path, **(vllm_options or {})))
        return engine

    @staticmethod
    def _start(settings: dict):
        from vllm import LLM
        return LLM(**settings)

    def close(self) -> None:
        """Stop vLLM's engine process (and its memory: the KV cache is reserved up front)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    # ---- checking ------------------------------------------------------------------------------------------------
    def prepare(self, image, items, sampling, param: str = "prompt", require_all_regions: bool = True) -> Job:
        """The HF engine's checks, and one of vLLM's: the multimodal path sizes its encoder cache for a number of
        region placeholders per prompt (rgpt_llava.vllm.multimodal.MAX_REGION_REFERENCES)."""
        job = super().prepare(image, items, sampling, param, require_all_regions)
        if self.path == "multimodal":
            from rgpt_llava.vllm.multimodal import MAX_REGION_REFERENCES
            refs = max(sum(1 for t in ids if t <= REGION_TOKEN_INDEX) for ids in job.prompts)
            if refs > MAX_REGION_REFERENCES:
                raise InputError(f"the prompt has {refs} region placeholders; vLLM's engine takes at most "
                                 f"{MAX_REGION_REFERENCES}", param)
        return job

    # ---- generating ----------------------------------------------------------------------------------------------
    def _sampling_params(self, job: Job, index: int):
        from vllm import SamplingParams
        s = job.sampling
        return SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=job.max_new_tokens,
            # one seed for the request; choices get their own stream (else n samples of one prompt would coincide)
            seed=None if s.seed is None else s.seed + index,
            ignore_eos=s.ignore_eos, stop_token_ids=[] if s.ignore_eos else [self.tokenizer.eos_token_id],
            detokenize=False)

    def _requests(self, job: Job):
        params = [self._sampling_params(job, i) for i in range(len(job.prompts))]
        if self.path == "embeds":
            return [{"prompt_embeds": e} for e in spliced_embeddings(self.model, job)], params
        return [multimodal_request(job, i, self.image_tokens, self.map_size) for i in range(len(job.prompts))], params

    def generate(self, job: Job, stream: bool = True) -> Iterator[List[Delta]]:
        """Yields every choice's whole answer once vLLM has finished them all (the offline engine does not stream)."""
        yield self.answer_many_deltas([job])[0]

    def generated_ids(self, jobs: Sequence[Job]) -> List[List[List[int]]]:
        """Every choice's generated token ids (EOS included where it ended one), per job. All jobs' choices go to
        vLLM together: its scheduler batches them continuously."""
        prompts, params, owners = [], [], []
        for j, job in enumerate(jobs):
            p, s = self._requests(job)
            prompts += p
            params += s
            owners.append(len(p))
        outputs = iter(self.llm.generate(prompts, params, use_tqdm=False))
        return [[list(next(outputs).outputs[0].token_ids) for _ in range(n)] for n in owners]

    def answer_many_deltas(self, jobs: Sequence[Job]) -> List[List[Delta]]:
        """Every choice of every job as one final :class:`Delta` (text, finish reason, token count)."""
        return [[_Choice(self, job, i).whole(ids) for i, ids in enumerate(per_job)]
                for job, per_job in zip(jobs, self.generated_ids(jobs))]

    def answer_many(self, jobs: Sequence[Job]) -> List[List[str]]:
        """Each job's choices' answers (``answer`` for many jobs at once)."""
        return [[d.text for d in deltas] for deltas in self.answer_many_deltas(jobs)]


class AsyncVLLMRegionEngine(VLLMRegionEngine):
    """:class:`VLLMRegionEngine` on vLLM's ``AsyncLLM``, for servers: concurrent requests each await their own
    answers while vLLM batches them all, streamed as they are decoded (:meth:`agenerate`). Load it inside the event
    loop that will use it (``AsyncLLM`` binds to the running loop)."""

    @staticmethod
    def _start(settings: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**settings))

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    @property
    def healthy(self) -> bool:
        """False once vLLM's engine process has died (or the engine is closed): then every request, in flight or new,
        fails with vLLM's ``EngineDeadError``, and a server should answer 503 and exit (docs/VLLM.md)."""
        return self.llm is not None and not self.llm.errored

    def generate(self, job: Job, stream: bool = True) -> Iterator[List[Delta]]:
        raise TypeError("AsyncVLLMRegionEngine generates asynchronously: use agenerate / aanswer")

    async def agenerate(self, job: Job) -> AsyncIterator[List[Delta]]:
        """Yields the choices' new text as vLLM decodes it (only choices with news), the HF engine's
        ``generate`` as an async stream. Closing the iteration (a client gone) aborts the job's requests in vLLM."""
        from vllm.sampling_params import RequestOutputKind
        prompts, params = self._requests(job)
        ids = [f"rgpt-{uuid.uuid4().hex}" for _ in prompts]
        choices = [_Choice(self, job, i) for i in range(len(prompts))]
        news: asyncio.Queue = asyncio.Queue()

        async def run(i: int):
            params[i].output_kind = RequestOutputKind.DELTA
            try:
                async for out in self.llm.generate(prompts[i], params[i], ids[i]):
                    delta = choices[i].feed(out.outputs[0].token_ids)
                    if delta is None and out.finished:
                        delta = choices[i].end()
                    if delta is not None:
                        await news.put(delta)
                    if choices[i].done:
                        break
                else:
                    end = choices[i].end()
                    if end is not None:
                        await news.put(end)
            except BaseException as e:   # noqa: B902  (EngineDeadError and cancellation reach the consumer)
                await news.put(e)
                raise
            finally:
                await news.put(None)

        tasks = [asyncio.ensure_future(run(i)) for i in range(len(prompts))]
        running = len(tasks)
        try:
            while running:
                batch = [await news.get()]
                while not news.empty():
                    batch.append(news.get_nowait())
                running -= sum(1 for d in batch if d is None)
                failure = next((d for d in batch if isinstance(d, BaseException)), None)
                if failure is not None:
                    raise failure
                deltas = [d for d in batch if isinstance(d, Delta)]
                if deltas:
                    yield deltas
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.llm is not None:    # choices a stop string or the client ended, still running in vLLM
                await self.llm.abort(ids)

    async def aanswer(self, job: Job) -> List[str]:
        """Every choice's whole answer, awaited."""
        texts = [""] * len(job.prompts)
        async for deltas in self.agenerate(job):
            for d in deltas:
                texts[d.index] += d.text
        return texts
