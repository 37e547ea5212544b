"""LLaVA's training arguments plus RGPT's own (every LLaVA flag keeps its meaning)."""
from dataclasses import dataclass, field, fields
from typing import List, Optional

from llava.train.train import DataArguments, ModelArguments, TrainingArguments


@dataclass
class RGPTModelArguments(ModelArguments):
    mm_refiner_type: Optional[str] = field(
        default="deconv", metadata={"help": "deconv (paper) | deconv_residual | bilinear | deconv+bilinear | none"})
    mm_refiner_act: Optional[str] = field(default="gelu", metadata={"help": "activation between the deconvolutions"})
    mm_refiner_scale: Optional[int] = field(default=None, metadata={"help": "total upsampling of bilinear refiners"})
    mm_merge_size: Optional[List[int]] = field(
        default=None, metadata={"help": "image-token grid H W (default: the vision tower's patch grid)"})
    sparse_lm_head: bool = field(
        default=False, metadata={"help": "in training, apply the LM head only where labels are supervised: the same "
                                         "loss and gradients without the [sequence x vocabulary] logits (saved in "
                                         "config.json; generation is unaffected)"})


@dataclass
class RGPTDataArguments(DataArguments):
    region_box_prob: float = field(
        default=0.0, metadata={"help": "probability of giving a region with a mask as its bounding box instead "
                                       "(augmentation: users draw boxes as often as masks)"})
    skipped_log: Optional[str] = field(
        default=None, metadata={"help": "JSONL file listing skipped samples (default: OUTPUT_DIR/skipped_samples.jsonl)"})


@dataclass
class RGPTTrainingArguments(TrainingArguments):
    freeze_mm_refiner: bool = field(default=False, metadata={"help": "keep the refiner fixed (it trains by default "
                                                                      "in both stages, as in the paper)"})
    if "warmup_ratio" not in {f.name for f in fields(TrainingArguments)}:
        # transformers 5 dropped --warmup_ratio (a --warmup_steps below 1 is a ratio now); LLaVA's scripts pass it.
        warmup_ratio: Optional[float] = field(default=None, metadata={"help": "as --warmup_steps below 1"})

        def __post_init__(self):
            if self.warmup_ratio is not None:
                if self.warmup_steps:
                    raise ValueError("give one of --warmup_ratio and --warmup_steps")
                if not 0 <= self.warmup_ratio < 1:
                    raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
                self.warmup_steps = self.warmup_ratio
            super().__post_init__()
