"""LLaVA's trainer with RGPT's checkpoints: the refiner travels with the projector everywhere the projector goes.

- stage 1 (``--tune_mm_mlp_adapter``): every checkpoint, intermediate ones too, holds ``mm_projector.bin`` with the
  projector AND the refiner, plus the optimizer, scheduler and RNG states LLaVA's version drops, so
  ``--resume_from_checkpoint`` / a rerun continues the same run;
- LoRA: every checkpoint holds ``non_lora_trainables.bin`` (projector, refiner) and the RGPT ``config.json`` beside
  the adapter, so each one loads with the builder and resumes with its projector and refiner;
- saving needs DeepSpeed only when the parameters are DeepSpeed's (LLaVA's ``maybe_zero_3`` imports it always).
"""
import contextlib
import inspect
import logging
import os
from typing import Dict, Optional

import torch
from transformers import Trainer

from llava.train.llava_trainer import LLaVATrainer

from rgpt_llava.constants import NON_LORA_FILE, STAGE1_FILE

logger = logging.getLogger(__name__)

REGION_MODULE_KEYS = ("mm_projector", "mm_refiner")


def maybe_zero_3(param, ignore_status=False, name=None):
    """LLaVA's helper without the unconditional DeepSpeed import: gather only a ZeRO-3 partitioned parameter."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
        if param.ds_status == ZeroParamStatus.NOT_AVAILABLE and not ignore_status:
            logger.warning(f"{name}: param.ds_status != ZeroParamStatus.NOT_AVAILABLE: {param.ds_status}")
        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def region_module_state(named_params) -> Dict[str, torch.Tensor]:
    """Projector + refiner weights (LLaVA's ``mm_projector.bin``, with the refiner added)."""
    return {k: maybe_zero_3(v, ignore_status=True) for k, v in named_params
            if any(key in k for key in REGION_MODULE_KEYS)}


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(_unwrap(model), PeftModel)


def _base_model(model):
    model = _unwrap(model)
    return model.get_base_model() if _is_peft(model) else model


def _unshare(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Copy tensors that share storage with an earlier one.

    A ZeRO-3 consolidated state dict can hand back parameters created after the LLM (projector, refiner) as views of
    one buffer; save_pretrained then keeps one name per storage and silently drops the rest ("Removed shared
    tensor"), leaving a checkpoint without them. Copies keep every weight.
    """
    seen, out = set(), {}
    for key, value in state_dict.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        if ptr is not None and ptr in seen:
            value = value.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = value
    return out


@contextlib.contextmanager
def _trusted_torch_load():
    """torch >= 2.6 loads with ``weights_only=True`` by default; transformers 4.37 reads its own checkpoint files
    (RNG states hold numpy arrays) without saying so and fails to resume. The files are this run's own: trust them."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


_TRAINER_INIT_PARAMS = frozenset(inspect.signature(Trainer.__init__).parameters)


class SeededShuffle(torch.utils.data.Sampler):
    """The training order: a permutation of the dataset drawn from ``(seed, epoch)`` alone.

    The Trainer's ``RandomSampler`` seeds itself from the global random state when an epoch starts (transformers 4.x
    with accelerate < 1), or accelerate 1.x swaps in its own seeded sampler: the same ``--seed`` gave another order
    on every stack. This order is the same on every stack, in every process of a distributed run, and on resume
    (the Trainer calls ``set_epoch`` through accelerate's data loader)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class RGPTTrainer(LLaVATrainer):
    def __init__(self, *args, **kwargs):
        if "tokenizer" in kwargs and "tokenizer" not in _TRAINER_INIT_PARAMS:
            kwargs["processing_class"] = kwargs.pop("tokenizer")   # transformers 5 (LLaVA's train() passes tokenizer=)
        super().__init__(*args, **kwargs)
        base = _base_model(self.model).get_model()
        refiner = base.get_refiner() if hasattr(base, "get_refiner") else None
        if refiner is not None:
            # LLaVA's train() freezes everything but the projector for stage 1 and lets LoRA freeze the rest:
            # the refiner is trained with the projector in both stages (paper Sec. 3.2) unless asked otherwise.
            refiner.requires_grad_(not self.args.freeze_mm_refiner)
            if self.args.bits in (4, 8):
                refiner.to(dtype=next(base.mm_projector.parameters()).dtype)
        dataset = self.train_dataset
        if dataset is not None and hasattr(dataset, "report_skip") and dataset.skipped_log is None:
            dataset.skipped_log = os.path.join(self.args.output_dir, "skipped_samples.jsonl")
            if self.args.should_save:
                for name, reason in dataset.load_skips:
                    dataset._append_skip_log(name, reason)

    def _get_train_sampler(self, *args, **kwargs):
        # LLaVA's modality-grouped sampler when asked for (--group_by_modality_length); else one order per (seed,
        # epoch) on every stack (SeededShuffle). `*args`: transformers 5 passes the dataset.
        if self.args.group_by_modality_length or self.train_dataset is None:
            return super()._get_train_sampler(*args, **kwargs)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return SeededShuffle(len(self.train_dataset), seed)

    def create_optimizer(self):
        """LLaVA's optimizer; with ``--mm_projector_lr`` the refiner joins the projector's groups (LLaVA's trainer
        picks that rate by the name ``mm_projector``, so the refiner -- the other region module, trained with the
        projector in both stages -- would otherwise get the LLM's rate)."""
        optimizer = super().create_optimizer()
        if self.args.mm_projector_lr is None or len(optimizer.param_groups) != 4:
            return optimizer
        refiner = {id(p) for n, p in self.model.named_parameters() if "mm_refiner" in n and p.requires_grad}
        groups = optimizer.param_groups  # LLaVA's: LLM decay, LLM no decay, projector decay, projector no decay
        for llm, region in ((0, 2), (1, 3)):
            moved = [p for p in groups[llm]["params"] if id(p) in refiner]
            groups[llm]["params"] = [p for p in groups[llm]["params"] if id(p) not in refiner]
            groups[region]["params"].extend(moved)
        return optimizer

    def floating_point_ops(self, inputs):
        # Only logged. transformers 4.37 cannot count a 4-bit model's parameters without CUDA (its bitsandbytes
        # check wants a GPU), although the model trains fine on the CPU: report 0 there instead of failing.
        if getattr(_base_model(self.model), "is_loaded_in_4bit", False) and not torch.cuda.is_available():
            return 0
        return super().floating_point_ops(inputs)

    # ---- saving ------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial, metrics=None):
        # LLaVA's stage-1 override writes only the projector; the base class also keeps optimizer, scheduler, RNG
        # and trainer state, and calls _save below for the weights.
        # (transformers >= 4.4x dropped the metrics argument; pass it only where it exists)
        Trainer._save_checkpoint(self, model, trial, *(() if metrics is None else (metrics,)))

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        base = _base_model(self.model)
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            if state_dict is not None:
                weights = {k: v.cpu() for k, v in state_dict.items() if any(key in k for key in REGION_MODULE_KEYS)}
            else:
                weights = region_module_state(self.model.named_parameters())
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                base.config.save_pretrained(output_dir)
                torch.save(weights, os.path.join(output_dir, STAGE1_FILE))
            return
        if state_dict is not None:
            state_dict = _unshare(state_dict)
        Trainer._save(self, output_dir, state_dict)
        if _is_peft(self.model):
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n}
            if state_dict is not None:
                non_lora = {k: v.cpu() for k, v in state_dict.items() if k in trainable}
            else:
                non_lora = {k: maybe_zero_3(v, ignore_status=True) for k, v in self.model.named_parameters()
                            if k in trainable}
            if self.args.should_save:
                base.config.save_pretrained(output_dir)
                torch.save(non_lora, os.path.join(output_dir, NON_LORA_FILE))

    # ---- resuming ----------------------------------------------------------------------------------------------
    def _load_rng_state(self, checkpoint):
        with _trusted_torch_load():
            return super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with _trusted_torch_load():
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        stage1 = os.path.join(resume_from_checkpoint, STAGE1_FILE)
        if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(stage1):
            self._load_partial(model, stage1)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        non_lora = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
        if _is_peft(model) and os.path.isfile(non_lora):
            self._load_partial(model, non_lora)

    @staticmethod
    def _load_partial(model, path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(_unwrap(model).named_parameters())
        unknown = [k for k in state if k not in params]
        if unknown:
            raise ValueError(f"{path}: weights the model does not have: {unknown[:8]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].dtype))
