"""LLaVA's training arguments plus RGPT's own (every LLaVA flag keeps its meaning)."""
from dataclasses import dataclass, field
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
