"""RGPT training entry: LLaVA's own ``train()`` with RGPT's model, arguments, dataset, collator and trainer.

    python -m rgpt_llava.train.train <LLaVA's flags> [--mm_refiner_type deconv] [--region_box_prob 0.3] ...
    RGPT_ATTN=flash_attention_2|sdpa|eager picks the LLM's attention (default: FlashAttention-2 where it can run,
    else SDPA); the choice and its reason are printed once.

LLaVA's ``llava.train.train.train()`` looks its helpers up in its module's globals when it runs; ``TrainingRun`` binds
RGPT's versions there for the duration of the call (and restores LLaVA's after), so LLaVA's training logic -- argument
parsing, quantisation, LoRA, vision-module initialisation, saving -- is reused as is, not copied.
"""
import contextlib
import importlib.util
import logging
import os
import socket
import sys
from types import SimpleNamespace

import torch
from transformers import set_seed
from transformers.utils import is_flash_attn_2_available

import llava.train.llava_trainer as llava_trainer_module
import llava.train.train as llava_train

from rgpt_llava.constants import STAGE1_FILE
from rgpt_llava.model.language_model.rgpt_llama import RGPTLlamaForCausalLM
from rgpt_llava.model.quantize import KEEP_UNQUANTIZED, quantize_linear_layers_
from rgpt_llava.prompt import CONV_MODE_FIELD, DEFAULT_CONV_MODE, conv_templates
from rgpt_llava.train.arguments import RGPTDataArguments, RGPTModelArguments, RGPTTrainingArguments
from rgpt_llava.train.dataset import make_region_data_module, summarize_skips
from rgpt_llava.train.trainer import RGPTTrainer, maybe_zero_3, region_module_state

logger = logging.getLogger(__name__)
_llava_safe_save = llava_train.safe_save_model_for_hf_trainer


def load_rgpt_model(path, **kwargs):
    """``RGPTLlamaForCausalLM.from_pretrained``, where LLaVA's train() loads ``LlavaLlamaForCausalLM``.

    transformers 4.37 refuses bitsandbytes without CUDA although bitsandbytes quantises and runs on the CPU; there
    the same ``BitsAndBytesConfig`` is applied right after loading, so QLoRA runs (and is tested) on CPU machines.
    """
    quant = kwargs.get("quantization_config")
    if quant is not None and not torch.cuda.is_available():
        for key in ("quantization_config", "load_in_4bit", "load_in_8bit", "device_map"):
            kwargs.pop(key, None)
        model = RGPTLlamaForCausalLM.from_pretrained(path, **kwargs)
        quant.llm_int8_skip_modules = sorted(set(quant.llm_int8_skip_modules or []) | set(KEEP_UNQUANTIZED))
        return quantize_linear_layers_(model, quant, device="cpu")
    return RGPTLlamaForCausalLM.from_pretrained(path, **kwargs)


def make_data_module(tokenizer, data_args, model=None):
    """RGPT's data module; with the complete ``model`` (tower, refiner), regions are made at its refined map's
    resolution in the dataset's workers."""
    if model is not None and model.get_vision_tower() is not None:
        data_args.region_map_size = model.region_map_size()
        if os.environ.get("RANK", "0") == "0":  # once, not once per process
            h, w = data_args.region_map_size
            print(f"region masks: {h}x{w}, the refined map's resolution", flush=True)
    return make_region_data_module(tokenizer, data_args)


def safe_save_model_for_hf_trainer(trainer, output_dir: str):
    """LLaVA's final save; for stage 1 the saved ``mm_projector.bin`` holds the refiner too."""
    if getattr(trainer.args, "tune_mm_mlp_adapter", False):
        weights = region_module_state(trainer.model.named_parameters())  # every rank: gathers ZeRO-3 shards
        trainer.model.config.save_pretrained(output_dir)
        if trainer.args.local_rank in (0, -1):
            torch.save(weights, os.path.join(output_dir, STAGE1_FILE))
        return
    if trainer.deepspeed:
        if torch.cuda.is_available():  # LLaVA synchronises unconditionally, which fails on CPU-only DeepSpeed
            torch.cuda.synchronize()
        trainer.save_model(output_dir)
        return
    _llava_safe_save(trainer=trainer, output_dir=output_dir)


def record_conv_mode(config, version: str) -> None:
    """The checkpoint names its conversation template in config.json (``conv_mode``), so the CLI, the servers and
    the evaluation prompt it as it was trained without being told. LLaVA's train() uses vicuna_v1 for an unknown
    --version; "plain" (projector pretraining, no chat) is not recorded: such checkpoints are served as vicuna_v1."""
    from llava.conversation import SeparatorStyle
    templates = conv_templates()
    name = version if version in templates else DEFAULT_CONV_MODE
    if templates[name].sep_style != SeparatorStyle.PLAIN:
        setattr(config, CONV_MODE_FIELD, name)


class TrainingRun:
    """One call of LLaVA's ``train()`` with RGPT's parts bound into its module.

    LLaVA's ``train()`` looks its helpers up in its module's globals when it runs; :meth:`bound` binds RGPT's there
    for the duration of the call and restores LLaVA's after. What ``train()`` builds and RGPT needs later -- the model
    (the data module reads its refined map's size) and the trainer (the summary reads its dataset) -- is kept on this
    run, not on a class: two runs in one process never see each other's.
    """

    def __init__(self, seed: int = 42, version: str = "v1"):
        self.seed = seed
        self.version = version
        self.model = None
        self.trainer = None

    def _load_model(self, path, **kwargs):
        self.model = load_rgpt_model(path, **kwargs)
        # LLaVA builds the projector (and RGPT the refiner) right after this, from the global RNG. Loading draws from
        # it differently per transformers version (4.x initialises every weight before overwriting it, 5.x does
        # not), so the same --seed gave other start weights on 5.x; re-seeding here gives the same on every stack.
        set_seed(self.seed)
        return self.model

    def _make_data_module(self, tokenizer, data_args):
        if self.model is not None:
            record_conv_mode(self.model.config, self.version)
        return make_data_module(tokenizer, data_args, model=self.model)

    def _make_trainer(self, *args, **kwargs):
        self.trainer = RGPTTrainer(*args, **kwargs)
        return self.trainer

    def bindings(self) -> dict:
        return {
            llava_train: dict(
                ModelArguments=RGPTModelArguments,
                DataArguments=RGPTDataArguments,
                TrainingArguments=RGPTTrainingArguments,
                LlavaLlamaForCausalLM=SimpleNamespace(from_pretrained=self._load_model),
                make_supervised_data_module=self._make_data_module,
                LLaVATrainer=self._make_trainer,
                safe_save_model_for_hf_trainer=safe_save_model_for_hf_trainer,
                maybe_zero_3=maybe_zero_3,
            ),
            llava_trainer_module: dict(maybe_zero_3=maybe_zero_3),
        }

    @contextlib.contextmanager
    def bound(self):
        bindings = self.bindings()
        saved = {mod: {k: getattr(mod, k) for k in names} for mod, names in bindings.items()}
        try:
            for mod, names in bindings.items():
                for k, v in names.items():
                    setattr(mod, k, v)
            yield self
        finally:
            for mod, names in saved.items():
                for k, v in names.items():
                    setattr(mod, k, v)


ATTENTION = ("flash_attention_2", "sdpa", "eager")


def choose_attention(training_args, requested=None):
    """The LLM's attention and why: RGPT_ATTN when set, else the caller's, else FlashAttention-2 where it can run,
    else SDPA (PyTorch's fused attention, in transformers' Llama since 4.36). LLaVA's train_mem asks for
    FlashAttention-2 unconditionally, which stops every run on machines without flash_attn (CPU, V100, T4)."""
    chosen = os.environ.get("RGPT_ATTN")
    if chosen is not None:
        if chosen not in ATTENTION:
            raise SystemExit(f"error: RGPT_ATTN={chosen!r} is not an attention implementation; "
                             f"use one of {', '.join(ATTENTION)}")
        return chosen, f"RGPT_ATTN={chosen}"
    if requested is not None:
        return requested, "asked by the caller"
    cuda = torch.cuda.is_available()
    for unusable, why in (
            (importlib.util.find_spec("flash_attn") is None, "flash_attn is not installed"),
            (not cuda, "no CUDA device"),
            (cuda and torch.cuda.get_device_capability()[0] < 8, "FlashAttention-2 needs an Ampere or newer GPU"),
            (not is_flash_attn_2_available(), "the installed flash_attn is too old for transformers"),
            (not (training_args.bf16 or training_args.fp16), "FlashAttention-2 needs --bf16 or --fp16")):
        if unusable:
            return "sdpa", why
    return "flash_attention_2", "flash_attn installed, CUDA GPU, half precision"


def start_single_process_group(training_args):
    """--deepspeed in a process that no launcher started (``python -m rgpt_llava.train.train --deepspeed ...``).

    transformers then turns DeepSpeed half on: its Trainer takes the run for a DeepSpeed one, but accelerate builds
    the DeepSpeed engine only when a launcher's rank variables are set, and the first checkpoint save fails
    (``'RGPTLlamaForCausalLM' object has no attribute 'save_checkpoint'``). Give the process the variables
    ``deepspeed --num_gpus 1`` would: DeepSpeed then runs as a group of one.
    """
    if not training_args.deepspeed or "LOCAL_RANK" in os.environ:
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:  # a free port, as two such runs may share a machine
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")


# The training scripts (scripts/rgpt/*.sh) fill these flags from environment variables: name both in errors.
SCRIPT_VARIABLES = {"model_name_or_path": "MODEL_BASE", "vision_tower": "VISION_TOWER", "data_path": "DATA_PATH",
                    "image_folder": "IMAGE_FOLDER", "pretrain_mm_mlp_adapter": "PRETRAIN_ADAPTER"}


def _looks_local(path: str) -> bool:
    """A path rather than a hub id ('org/name' or 'name'), which transformers resolves from its cache or the hub."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def input_errors(model_args, data_args) -> list:
    """What the run's inputs lack, checked before any model loads: a run would otherwise stop minutes later (the
    data) or with a hub error about a 'repo id' (a folder path that does not exist), once per process."""
    checks = [("model_name_or_path", model_args.model_name_or_path, "folder"),
              ("vision_tower", model_args.vision_tower, "folder"),
              ("pretrain_mm_mlp_adapter", model_args.pretrain_mm_mlp_adapter, "file"),
              ("data_path", data_args.data_path, "file"),
              ("image_folder", data_args.image_folder, "folder")]
    errors = []
    for flag, value, kind in checks:
        if not value:
            continue
        path = os.path.expanduser(value)
        exists = os.path.isdir(path) if kind == "folder" else os.path.isfile(path)
        if exists or (kind == "folder" and flag != "image_folder" and not _looks_local(value)):
            continue
        what = "no such folder" if kind == "folder" else ("a folder, not a file" if os.path.isdir(path)
                                                         else "no such file")
        errors.append(f"--{flag} {value}: {what}" + (f" (the training scripts take it from {SCRIPT_VARIABLES[flag]})"
                                                      if flag in SCRIPT_VARIABLES else ""))
    return errors


def train(attn_implementation=None):
    # LLaVA builds the projector (and here the refiner) before the Trainer seeds anything, so two runs of the same
    # command start from different weights; seed first, from the run's own --seed.
    import transformers
    parser = transformers.HfArgumentParser((RGPTModelArguments, RGPTDataArguments, RGPTTrainingArguments))
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(return_remaining_strings=True)
    errors = input_errors(model_args, data_args)
    if errors:  # every process stops; rank 0 says why
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(f"error: {e}" for e in errors), file=sys.stderr, flush=True)
        raise SystemExit(2)
    transformers.set_seed(training_args.seed)
    attn_implementation, why = choose_attention(training_args, attn_implementation)
    start_single_process_group(training_args)
    if os.environ.get("RANK", "0") == "0":  # once, not once per process
        print(f"attention: {attn_implementation} ({why})", flush=True)
    conv_templates()  # RGPT's ChatML templates join LLaVA's before its train() looks --version up
    run = TrainingRun(seed=training_args.seed, version=model_args.version)
    with run.bound():
        llava_train.train(attn_implementation=attn_implementation)
    trainer = run.trainer
    if trainer is not None and trainer.args.should_save:
        print(summarize_skips(getattr(trainer.train_dataset, "skipped_log", None)))


if __name__ == "__main__":
    train()
