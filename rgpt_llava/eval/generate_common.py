"""Shared machinery of the generation steps (``python -m rgpt_llava.eval.model_<benchmark>``).

* model loading through :func:`rgpt_llava.model.builder.load_pretrained_model`;
* LLaVA's sharding (``--num-chunks N --chunk-idx K``: :func:`get_chunk`, as ``llava/eval/model_vqa_loader.py``);
* a resumable JSONL answers writer (:class:`AnswerWriter`): ids already in the file are skipped, every answer is
  flushed as soon as it is written, a line cut by a crash at the end of the file is dropped and regenerated;
* prompts with ``conv_templates[--conv-mode]`` (default ``vicuna_v1``).

The generation itself -- the image encoded once, the shared prefix's KV cache reused, the prompts decoded as a batch
-- is :mod:`rgpt_llava.generation`, which the CLI and the servers use too.
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

from rgpt_llava.prompt import DEFAULT_CONV_MODE, check_conv_mode, question_answer_prompt
from rgpt_llava.eval.common import EvalInputError, id_key
from rgpt_llava.jsonl import read_resumable_jsonl
from rgpt_llava.progress import iter_progress



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
    from rgpt_llava.model.builder import device_arg
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-base", default=None)
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--answers-file", required=True)
    ap.add_argument("--conv-mode", default=DEFAULT_CONV_MODE)
    ap.add_argument("--num-chunks", type=int, default=1)
    ap.add_argument("--chunk-idx", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (per image)")
    ap.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--load-4bit", action="store_true")
    ap.add_argument("--load-8bit", action="store_true")
    ap.add_argument("--regions-as-text", action="store_true",
                    help="baseline for plain LLaVA: write each region into the prompt as its box [x1, y1, x2, y2] "
                         "(normalised to the image the model sees) instead of a region token; no masks are passed")
    ap.add_argument("--naive", action="store_true",
                    help="reference path: model.generate per batch of full prompts (no KV-cache reuse)")


def check_run_args(args) -> None:
    """The chunk, and an answers file that is none of the files read (a question file taken as answers would look
    finished: every question_id 'done', nothing generated)."""
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        fail(f"--chunk-idx {args.chunk_idx} must be in 0..{args.num_chunks - 1} (--num-chunks {args.num_chunks})")
    from rgpt_llava.paths import output_clash
    clash = output_clash({"--answers-file": args.answers_file},
                         {f"--{k.replace('_', '-')}": v for k, v in vars(args).items()
                          if k.endswith("_file") and k != "answers_file"})
    if clash:
        fail(clash)


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
    """The conversation text (:func:`rgpt_llava.prompt.question_answer_prompt`): ``turns`` = [(user, assistant or
    None), ...]; ``<image>\\n`` leads the first turn."""
    try:
        check_conv_mode(conv_mode)
    except ValueError as e:
        fail(f"--conv-mode {e}")
    return question_answer_prompt(turns, conv_mode, image=image)


def image_tensor(model, image_processor, image) -> torch.Tensor:
    from llava.mm_utils import process_images
    return process_images([image], image_processor, model.config)[0].to(model.device, dtype=model.dtype)


def region_masks(regions: Sequence[Any], image, image_processor, model, where: str) -> torch.Tensor:
    from rgpt_llava.geometry import process_regions
    try:
        m = process_regions(list(regions), image.size, image_processor,
                            getattr(model.config, "image_aspect_ratio", "pad"), map_size=model.region_map_size())
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


def run_main(main, argv=None) -> int:
    """Input errors: one ``error: ...`` line on stderr, exit status 2 (as the scorers)."""
    try:
        return main(argv)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
