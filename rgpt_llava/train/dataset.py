"""Region instruction data for LLaVA's training loop: dataset and collator.

A sample is LLaVA's conversation JSON plus an optional ``regions`` list (see docs/DATA.md). Images go through
LLaVA's own ``process_images`` and regions through ``rgpt_llava.geometry`` -- the code inference uses -- so training
and serving see the same masks. Conversations go through LLaVA's own ``preprocess`` with region placeholders
tokenised by ``tokenizer_region_token``. Masks are made at the refined map's resolution when
``data_args.region_map_size`` is set (the training entry sets it from the model): [R, 96, 96] for CLIP-L/336, so no
[R, 336, 336] tensor is built in the workers, collated, or moved to the GPU.

A sample that cannot be used (missing or corrupt image, invalid region, placeholder naming a missing region, LLaVA's
"tokenization mismatch") is skipped with a warning naming it, recorded in a JSONL log, and replaced by the next
usable sample: a run never crashes on one bad sample and never trains a sample with misaligned regions.
"""
import contextlib
import copy
import json
import logging
import os
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

import llava.train.train as llava_train
from llava.mm_utils import process_images
from llava.train.train import DataCollatorForSupervisedDataset, LazySupervisedDataset

from rgpt_llava import jsonl
from rgpt_llava.constants import IGNORE_INDEX, REGION_TOKEN_INDEX
from rgpt_llava.data.common import check_sample
from rgpt_llava.geometry import model_input_size, parse_region, process_regions
from rgpt_llava.jsonl import JsonFileError, read_records
from rgpt_llava.mm_utils import tokenizer_region_token

logger = logging.getLogger(__name__)


class SampleError(ValueError):
    """Why one sample cannot be trained on."""


@contextlib.contextmanager
def region_aware_llava_preprocess():
    """LLaVA's ``preprocess`` tokenises with the module global ``tokenizer_image_token``; let it see regions.

    ``tokenizer_region_token`` gives LLaVA's ids for prompts without region placeholders, so this changes nothing
    else. Restored on exit, so LLaVA used elsewhere in the process is untouched.
    """
    saved = llava_train.tokenizer_image_token
    llava_train.tokenizer_image_token = tokenizer_region_token
    try:
        yield
    finally:
        llava_train.tokenizer_image_token = saved


def tokenize_conversation(sample: Dict, tokenizer, data_args) -> Tuple[torch.Tensor, torch.Tensor]:
    """A sample's ``input_ids`` and ``labels`` (instructions masked): LLaVA's ``preprocess_multimodal`` and
    ``preprocess`` with the conversation template LLaVA's ``train()`` set, region placeholders as sentinels; a ChatML
    template (which LLaVA's ``preprocess`` has no branch for) through :func:`tokenize_chatml`."""
    has_image = "image" in sample
    sources = copy.deepcopy([sample["conversations"]])
    if has_image:
        sources = llava_train.preprocess_multimodal(sources, data_args)
    conv = llava_train.conversation_lib.default_conversation
    if conv.version == "chatml":
        return tokenize_chatml(sources[0], tokenizer, conv)
    with region_aware_llava_preprocess():
        data = llava_train.preprocess(sources, tokenizer, has_image=has_image)
    return data["input_ids"][0], data["labels"][0]


def tokenize_chatml(turns: List[Dict], tokenizer, template) -> Tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``labels`` of one conversation in a ChatML template: the ids are exactly what inference
    tokenises for the same text (``tokenizer_region_token`` of the whole prompt); each answer and the
    ``<|im_end|>\\n`` that closes it are supervised (the LLM learns to stop), everything else is masked.

    An answer's token span is found by tokenising the text up to its start and up to its end: a prefix whose ids are
    not the start of the whole text's ids (a BPE merge across the boundary) raises SampleError, so labels never
    drift from the text they supervise.
    """
    conv = template.copy()
    conv.messages = []
    if turns and turns[0]["from"] != "human":
        turns = turns[1:]  # LLaVA's convention: a conversation starts with the human
    spans, text = [], conv.system + conv.sep
    for j, turn in enumerate(turns):
        role = conv.roles[j % 2]
        if turn["from"] != ("human" if j % 2 == 0 else "gpt"):
            raise SampleError(f"turn {j + 1} is from {turn['from']!r}; turns must alternate human, gpt")
        conv.append_message(role, turn["value"])
        start = len(text) + len(role)
        text += role + turn["value"] + conv.sep
        if j % 2 == 1:
            spans.append((start, len(text)))
    if text != conv.get_prompt():
        raise SampleError("the ChatML text does not match the template's rendering")  # a template changed under us
    input_ids = tokenizer_region_token(text, tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        head, upto = (tokenizer_region_token(text[:cut], tokenizer) for cut in (start, end))
        first, stop = len(head), len(upto)
        if input_ids[:stop] != upto or upto[:first] != head:
            raise SampleError(f"tokenization mismatch at the answer {text[start:end]!r}: the tokenizer merges "
                              f"across its boundary")
        labels[first:stop] = input_ids[first:stop]
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def load_samples(data_path: str) -> List[Dict]:
    """A JSON list (LLaVA's format) or JSONL file of samples (:mod:`rgpt_llava.jsonl`; the extension decides)."""
    try:
        records = read_records(data_path, jsonl=data_path.endswith(".jsonl"), objects=False)
    except JsonFileError as e:
        if e.kind in (jsonl.MISSING, jsonl.DIRECTORY):
            raise FileNotFoundError(f"--data_path {data_path}: no such file") from None
        if e.kind == jsonl.NOT_A_LIST:
            raise ValueError(f"{data_path}: expected a JSON list of samples, got {e.problem}") from None
        if e.kind == jsonl.MALFORMED and data_path.endswith(".jsonl"):
            raise ValueError(f"{data_path}:{e.line}: not valid JSON ({e.cause})") from None
        raise ValueError(f"{data_path}: not valid JSON ({e.cause or e})") from None
    return [sample for _, sample in records]


def sample_name(sample, index) -> str:
    sid = sample.get("id") if isinstance(sample, dict) else None
    return f"sample {index}" + (f" (id {sid})" if sid is not None else "")


class RegionSupervisedDataset(LazySupervisedDataset):
    """LLaVA's ``LazySupervisedDataset`` (lengths, modality_lengths, preprocessing) with region masks."""

    def __init__(self, data_path: str, tokenizer, data_args):
        torch.utils.data.Dataset.__init__(self)
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.skipped_log = getattr(data_args, "skipped_log", None)
        samples = load_samples(data_path)
        self.list_data_dict, self.load_skips = [], []
        for i, sample in enumerate(samples):
            reason = check_sample(sample)  # the same check the data converters apply before writing
            if not reason:
                self.list_data_dict.append(sample)
            else:
                # logged now; written to the skip log once the trainer has named it (RGPTTrainer), or now if set
                self.load_skips.append((sample_name(sample, i), reason))
                logger.warning(f"skipping {sample_name(sample, i)}: {reason}")
        if self.skipped_log:
            for name, reason in self.load_skips:
                self._append_skip_log(name, reason)
        if not self.list_data_dict:
            raise ValueError(f"{data_path}: no usable sample ({len(self.load_skips)} skipped, see the warnings)")
        self.seed = getattr(data_args, "seed", 0)
        self.rng, self._rng_worker = random.Random(self.seed), None

    def draws(self) -> random.Random:
        """The box-versus-mask draws' generator: the main process's ``Random(seed)``; in a dataloader worker, one of
        the worker's own (``seed/worker/k``), since each worker gets a copy of the dataset and would otherwise repeat
        the same draws as every other worker."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._rng_worker != info.id:
            self.rng, self._rng_worker = random.Random(f"{self.seed}/worker/{info.id}"), info.id
        return self.rng

    def report_skip(self, name: str, reason: str):
        logger.warning(f"skipping {name}: {reason}")
        if self.skipped_log:
            self._append_skip_log(name, reason)

    def _append_skip_log(self, name: str, reason: str):
        os.makedirs(os.path.dirname(os.path.abspath(self.skipped_log)), exist_ok=True)
        with open(self.skipped_log, "a") as f:  # one line per skip: works across dataloader workers and ranks
            f.write(json.dumps({"sample": name, "reason": reason}) + "\n")

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        n = len(self.list_data_dict)
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                return self.build(j)
            except (SampleError, OSError, ValueError) as e:
                self.report_skip(sample_name(self.list_data_dict[j], j), str(e))
        raise RuntimeError("every sample of the dataset failed to load; see the warnings")

    def region_specs(self, sample) -> list:
        specs = []
        for region in sample.get("regions") or []:
            if (isinstance(region, dict) and "segmentation" in region and "bbox" in region
                    and self.draws().random() < getattr(self.data_args, "region_box_prob", 0.0)):
                region = {"bbox": region["bbox"]}
            specs.append(region)
        return specs

    def build(self, i) -> Dict[str, torch.Tensor]:
        sample = self.list_data_dict[i]
        processor = self.data_args.image_processor
        aspect = self.data_args.image_aspect_ratio
        if "image" in sample:
            path = os.path.join(self.data_args.image_folder or "", sample["image"])
            try:
                image = Image.open(path)
                image.load()
                image = image.convert("RGB")
            except FileNotFoundError:
                raise SampleError(f"image {path} not found") from None
            except OSError as e:
                raise SampleError(f"image {path} is unreadable ({e})") from None
            pixels = process_images([image], processor, SimpleNamespace(image_aspect_ratio=aspect))[0]
            try:
                regions = [parse_region(spec, k, image.size) for k, spec in enumerate(self.region_specs(sample))]
                masks = process_regions(regions, image.size, processor, aspect,
                                        map_size=getattr(self.data_args, "region_map_size", None)) if regions else None
            except (ValueError, FileNotFoundError) as e:
                raise SampleError(str(e)) from None
        else:
            masks = None
        input_ids, labels = tokenize_conversation(sample, self.tokenizer, self.data_args)
        answers = any(t["from"] == "gpt" and t["value"].strip() for t in sample["conversations"])
        if answers and not bool((labels != IGNORE_INDEX).any()):
            # LLaVA prints "tokenization mismatch" and trains the sample at zero loss; report and skip it instead.
            raise SampleError("tokenization mismatch: the answer masks do not line up with the conversation template "
                              "(check --version against the tokenizer)")
        refs = REGION_TOKEN_INDEX - input_ids[input_ids <= REGION_TOKEN_INDEX]
        n_regions = 0 if masks is None else masks.shape[0]
        if refs.numel() and int(refs.max()) >= n_regions:
            raise SampleError(f"the conversation refers to <region{int(refs.max()) + 1}> but the sample has "
                              f"{n_regions} region(s)")
        out = dict(input_ids=input_ids, labels=labels, region_masks=masks)
        if "image" in sample:
            out["image"] = pixels
        elif self.data_args.is_multimodal:
            # LLaVA's blank image is crop_size; a SigLIP processor has none (it resizes to size, no crop).
            out["image"] = torch.zeros(3, *model_input_size(processor))
        return out


@dataclass
class DataCollatorForRegionDataset(DataCollatorForSupervisedDataset):
    """LLaVA's collator (padding, truncation, image stacking) plus the per-sample list of region masks."""

    def __call__(self, instances: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        batch = super().__call__(instances)
        batch["region_masks"] = [inst.get("region_masks") for inst in instances]
        return batch


def make_region_data_module(tokenizer, data_args) -> Dict:
    """Drop-in for LLaVA's ``make_supervised_data_module``."""
    dataset = RegionSupervisedDataset(data_path=data_args.data_path, tokenizer=tokenizer, data_args=data_args)
    collator = DataCollatorForRegionDataset(tokenizer=tokenizer)
    return dict(train_dataset=dataset, eval_dataset=None, data_collator=collator)


def summarize_skips(path: Optional[str]) -> str:
    """One line: how many samples were skipped and why (from the skip log)."""
    if not path or not os.path.exists(path):
        return "skipped samples: 0"
    reasons: Dict[str, int] = {}
    with open(path) as f:
        for line in f:
            reason = json.loads(line)["reason"]
            key = reason.split(":")[0] if "tokenization mismatch" in reason else reason[:80]
            reasons[key] = reasons.get(key, 0) + 1
    total = sum(reasons.values())
    top = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    return f"skipped samples: {total} (see {path}): {top}"
