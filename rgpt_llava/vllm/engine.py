"""The serving engine's interface with vLLM running the LLM: :class:`VLLMRegionEngine`.

It IS a :class:`rgpt_llava.serve.engine.RegionEngine` for everything before generation: ``prepare`` (the same checks,
the same 4xx :class:`~rgpt_llava.serve.inputs.InputError`, the same token ids and region masks) and the answer's text
(the same stop-string and byte-fallback handling, ``_Row``). Only ``generate`` differs: the package's vision side
(tower at the selected layer, refiner, merge, mask pooling, the one projector; ``encode_images_and_regions``) and its
one splice (``rgpt_llava.model.splice``) make each prompt's input embeddings, and vLLM's Llama, loaded from the same
checkpoint (:mod:`rgpt_llava.vllm.model`), decodes them (``prompt_embeds``). :meth:`answer_many` hands many requests
to vLLM at once, which is where its continuous batching pays.

vLLM starts its engine core in a spawned process: a script that loads this engine needs the
``if __name__ == "__main__":`` guard.
"""
from typing import Iterator, List, Optional, Sequence

import torch

from rgpt_llava.constants import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from rgpt_llava.model.splice import count_images, embed_text, splice
from rgpt_llava.serve.engine import Delta, Job, RegionEngine, _Row

# vLLM's settings that make its answers equal the HF engine's on a CPU: the checkpoint's fp32, no graph capture.
EXACT_OPTIONS = {"dtype": "float32", "enforce_eager": True}


# How requests reach vLLM: "multimodal": ids and the processed image with its regions, the vision side inside vLLM
# (rgpt_llava.vllm.multimodal); "embeds": input embeddings spliced here, vLLM runs the LLM (rgpt_llava.vllm.model).
PATHS = ("multimodal", "embeds")


def start_llm(model_path: str, context_len: int, path: str = "multimodal", **options):
    """vLLM's offline engine on the checkpoint. vLLM neither tokenises nor detokenises (``skip_tokenizer_init``):
    this package's tokenizer does both, so ids and text are LLaVA-1.5's on every stack (rgpt_llava.tokenization)."""
    from vllm import LLM

    from rgpt_llava.vllm.plugin import MULTIMODAL_ARCHITECTURE
    settings = dict(EXACT_OPTIONS, max_model_len=context_len, seed=0)
    if path == "multimodal":
        # the item arrives processed (a dict of tensors): vLLM calls that "embeddings" input and wants it allowed
        settings.update(hf_overrides={"architectures": [MULTIMODAL_ARCHITECTURE]}, enable_mm_embeds=True)
    elif path == "embeds":
        settings.update(enable_prompt_embeds=True)
    else:
        raise ValueError(f"path {path!r}: expected one of {PATHS}")
    settings.update(options)
    return LLM(model=model_path, skip_tokenizer_init=True, **settings)


def multimodal_request(job: Job, index: int, image_tokens: int, map_size) -> dict:
    """Choice ``index`` of ``job`` as vLLM's input to the multimodal model: the ids with each sentinel replaced by
    placeholders (the image's by ``image_tokens`` of them), and the item saying which row of [image tokens; region
    tokens] each placeholder gets (rgpt_llava.vllm.multimodal)."""
    from rgpt_llava.vllm.multimodal import PLACEHOLDER_ID
    prompt, positions, rows = [], [], []
    for t in job.prompts[index]:
        if t == IMAGE_TOKEN_INDEX:
            positions += range(len(prompt), len(prompt) + image_tokens)
            rows += range(image_tokens)
            prompt += [PLACEHOLDER_ID] * image_tokens
        elif t <= REGION_TOKEN_INDEX:
            positions.append(len(prompt))
            rows.append(image_tokens + REGION_TOKEN_INDEX - t)    # region k's token follows the image tokens
            prompt.append(PLACEHOLDER_ID)
        else:
            prompt.append(t)
    if job.image is None:
        return {"prompt_token_ids": prompt}
    masks = job.masks[index]
    if masks is None:
        masks = job.image.new_zeros((0,) + tuple(map_size))
    return {"prompt_token_ids": prompt, "multi_modal_data": {"image": {
        "pixel_values": job.image[None].cpu(), "region_masks": masks[None].cpu(),
        "embed_positions": torch.tensor(positions)[None], "embed_rows": torch.tensor(rows)[None]}}}


def spliced_embeddings(model, job: Job) -> List[torch.Tensor]:
    """Each prompt's input embeddings [L, D] as the HF model sees them: the image and all regions of the job encoded
    in one call, image tokens at the image sentinel and region k's token at its sentinels (the one splice)."""
    counts = [0 if m is None else int(m.shape[0]) for m in job.masks]
    image_tokens, region_tokens = None, [None] * len(job.prompts)
    with torch.inference_mode():
        if job.image is not None:
            masks = [m for m in job.masks if m is not None and m.shape[0]]
            image_out, regions_out = model.encode_images_and_regions(job.image[None],
                                                                     [torch.cat(masks) if masks else None])
            image_tokens = image_out[0]
            if sum(counts):
                region_tokens = [r if c else None for r, c in zip(torch.split(regions_out[0], counts), counts)]
        embeds = []
        for ids, regions in zip(job.prompts, region_tokens):
            t = torch.tensor(ids, dtype=torch.long, device=model.device)
            images = [image_tokens] * count_images(t) if image_tokens is not None else []
            embeds.append(splice(t, embed_text(model.get_model().embed_tokens, t), images, regions)[0].cpu())
    return embeds


class VLLMRegionEngine(RegionEngine):
    """A :class:`RegionEngine` whose LLM runs in vLLM (``llm``: a ``vllm.LLM`` on the same checkpoint)."""

    llm = None
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
        engine.llm = start_llm(model_path, engine.context_len, path, **(vllm_options or {}))
        return engine

    def close(self) -> None:
        """Stop vLLM's engine process (and its memory: the KV cache is reserved up front)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

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

    def _finish(self, job: Job, index: int, tokens: Sequence[int]) -> Delta:
        """One choice's whole answer from its generated ids, as the HF engine's loop turns ids into text: EOS ends
        it ("stop"), a stop string cuts it ("stop"; vLLM, without a tokenizer, cannot see them), else "length"."""
        row = _Row(self.tokenizer, tuple(s for s in job.sampling.stop if s), self.special_ids, self.byte_ids)
        eos = None if job.sampling.ignore_eos else self.tokenizer.eos_token_id
        text = ""
        for step, token in enumerate(tokens[:job.max_new_tokens]):
            delta, reason = row.push(int(token), eos)
            if reason is None and step == job.max_new_tokens - 1:
                delta, reason = delta + row.flush(), "length"
            text += delta
            if reason is not None:
                return Delta(index, text, reason, step + 1)
        return Delta(index, text + row.flush(), "length", len(tokens))

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
        return [[self._finish(job, i, ids) for i, ids in enumerate(per_job)]
                for job, per_job in zip(jobs, self.generated_ids(jobs))]

    def answer_many(self, jobs: Sequence[Job]) -> List[List[str]]:
        """Each job's choices' answers (``answer`` for many jobs at once)."""
        return [[d.text for d in deltas] for deltas in self.answer_many_deltas(jobs)]
