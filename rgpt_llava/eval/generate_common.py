"""Shared machinery of the generation steps (``python -m rgpt_llava.eval.model_<benchmark>``).

* the model behind a :class:`rgpt_llava.serve.engine.RegionEngine` (:func:`load_engine`), and each image's questions
  prepared by ``engine.prepare`` (:func:`question`, :func:`prepare`): the one request path of the CLI, the servers,
  RecapD and evaluation -- image + regions + prompt -> the same checks and encoding -> :mod:`rgpt_llava.generation`;
* LLaVA's sharding (``--num-chunks N --chunk-idx K``: :func:`get_chunk`, as ``llava/eval/model_vqa_loader.py``);
* a resumable JSONL answers writer (:class:`AnswerWriter`): ids already in the file are skipped, every answer is
  flushed as soon as it is written, a line cut by a crash at the end of the file is dropped and regenerated;
* prompts with ``conv_templates[--conv-mode]`` (default: the checkpoint's ``conv_mode``, else ``vicuna_v1``).

The generation itself -- the image encoded once, the shared prefix's KV cache reused, the prompts decoded as a batch
-- is :mod:`rgpt_llava.generation` (:func:`answer`; ``--naive``: its ``model.generate`` reference path).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import OrderedDict
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from dataclasses import dataclass, replace

import torch

from rgpt_llava import generation
from rgpt_llava.eval.common import EvalInputError, id_key, read_rows
from rgpt_llava.prompt import DEFAULT_CONV_MODE, check_conv_mode, question_answer_prompt, resolve_conv_mode
from rgpt_llava.regions.kinds import parse_region
from rgpt_llava.regions.region import Region
from rgpt_llava.serve.engine import Job, RegionEngine, Sampling
from rgpt_llava.serve.inputs import InputError
from rgpt_llava.jsonl import JsonFileError, read_resumable_jsonl
from rgpt_llava.paths import args_output_clash
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
    """Objects of a JSONL file (or a JSON list), each with a ``question_id`` and its place (``_where``, named in
    errors: the file and line)."""
    out = []
    for where, obj in read_rows(path, what):
        if "question_id" not in obj:
            fail(f"{where}: missing field 'question_id'")
        out.append(dict(obj, _where=where))
    return out


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
    """Append-only JSONL answers file that knows which ids (field ``key``: ``question_id`` for the benchmarks, ``id``
    for ``rgpt_llava.serve.batch``) are done (resume after a crash)."""

    def __init__(self, path: str, key: str = "question_id"):
        self.path, self.key = path, key
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            rows = read_resumable_jsonl(path, check=lambda obj: id_key(obj[key]))
        except JsonFileError as e:
            fail(f"answers file {e}; fix or delete the file")
        self.done = {id_key(r[key]) for r in rows}
        self.num_written = 0
        self._f = open(path, "a", encoding="utf-8")

    def is_done(self, qid: Any) -> bool:
        return id_key(qid) in self.done

    def write(self, obj: dict) -> None:
        key = id_key(obj[self.key])
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
    ap.add_argument("--conv-mode", default=None,
                    help="conversation template (default: the checkpoint's own, its config.json's conv_mode; "
                         f"{DEFAULT_CONV_MODE} when it names none)")
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


def check_run_args(parser: argparse.ArgumentParser, args) -> None:
    """The chunk, and an answers file that is none of the files read (a question file taken as answers would look
    finished: every question_id 'done', nothing generated)."""
    args.conv_mode = resolve_conv_mode(args.conv_mode, args.model_path)
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        fail(f"--chunk-idx {args.chunk_idx} must be in 0..{args.num_chunks - 1} (--num-chunks {args.num_chunks})")
    clash = args_output_clash(parser, args, ("answers_file",))
    if clash:
        fail(clash)


def load_engine(args) -> RegionEngine:
    """The checkpoint behind a :class:`RegionEngine` (``RegionEngine.load``: the same loading, padding side included,
    as the CLI and the servers)."""
    if not os.path.isdir(args.model_path):
        fail(f"--model-path {args.model_path}: no such checkpoint folder")
    # Benchmark questions are not requests: no per-request region cap (a COCO image has up to 90 objects, all asked
    # about in one prompt by coco_cls --mode one_turn_all).
    engine = RegionEngine.load(args.model_path, args.model_base, device=args.device, load_8bit=args.load_8bit,
                               load_4bit=args.load_4bit, max_regions=sys.maxsize)
    engine.model.eval()
    return engine


def conv_prompt(turns: Sequence[Tuple[str, Optional[str]]], conv_mode: str = DEFAULT_CONV_MODE,
                image: bool = True) -> str:
    """The conversation text (:func:`rgpt_llava.prompt.question_answer_prompt`): ``turns`` = [(user, assistant or
    None), ...]; ``<image>\\n`` leads the first turn."""
    try:
        check_conv_mode(conv_mode)
    except ValueError as e:
        fail(f"--conv-mode {e}")
    return question_answer_prompt(turns, conv_mode, image=image)


@dataclass
class Question:
    """One prompt as the model gets it: the conversation text, its regions, and where it came from (for errors)."""
    prompt: str
    regions: List[Region]
    where: str


def region_prompt(args, prompt: str, regions: Sequence[dict], image, where: str, aspect: str = "pad") -> str:
    """``prompt`` as the model gets it: unchanged, or with ``--regions-as-text`` each placeholder replaced by its
    region's box text (normalised to the image the model sees: ``aspect`` is the model's image_aspect_ratio)."""
    if not getattr(args, "regions_as_text", False):
        return prompt
    from rgpt_llava.data.text_regions import box_text, replace_regions
    try:
        boxes = []
        for k, r in enumerate(regions):
            if "bbox" not in r:
                raise ValueError(f"region {k + 1} has no 'bbox' (--regions-as-text needs boxes)")
            boxes.append(box_text(r["bbox"], *image.size, aspect))
        return replace_regions(prompt, boxes)
    except ValueError as e:
        fail(f"{where}: {e}")


def question(args, image, prompt: str, regions: Sequence[dict], where: str, aspect: str = "pad") -> Question:
    """A prompt about ``regions`` (dicts with ``bbox`` / ``segmentation``, as the question files hold them) on
    ``image``: the dicts become :class:`Region` objects here, once, an error naming the question; with
    ``--regions-as-text`` the placeholders become the regions' box text and no region is passed."""
    if getattr(args, "regions_as_text", False):
        return Question(region_prompt(args, prompt, regions, image, where, aspect), [], where)
    try:
        parsed = [parse_region(spec, k, image.size) for k, spec in enumerate(regions)]
    except (ValueError, FileNotFoundError) as e:
        fail(f"{where}: {e}")
    return Question(prompt, parsed, where)


def prepare(engine: RegionEngine, image, questions: Sequence[Question], max_new_tokens: int,
            require_all_regions: bool = True) -> Job:
    """The questions on one image as one :class:`Job` (``engine.prepare``: image, regions and prompts checked and
    encoded as for every other entry point). An input error names the question at fault."""
    sampling = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)

    def prepared(items: Sequence[Question]) -> Job:
        return engine.prepare(image, [(q.prompt, q.regions) for q in items], sampling, param=items[0].where,
                              require_all_regions=require_all_regions)
    try:
        return prepared(questions)
    except InputError as e:
        error = e
    for q in questions[1:]:     # the questions are prepared together: which one is at fault, alone?
        try:
            prepared([q])
        except InputError as e:
            fail(str(e))
    fail(str(error))


def answer(engine: RegionEngine, job: Job, batch_size: int, naive: bool = False) -> List[str]:
    """Greedy answers of a prepared job, ``batch_size`` prompts decoded together: the shared-prefix path of
    :mod:`rgpt_llava.generation`, or with ``naive`` its reference path (``model.generate`` per batch)."""
    model, tokenizer = engine.model, engine.tokenizer
    if naive:
        outs = []
        for i in range(0, len(job.prompts), batch_size):
            prompts = job.prompts[i:i + batch_size]
            outs += generation.generate_naive(model, tokenizer, [job.image] * len(prompts), prompts,
                                              job.masks[i:i + batch_size], job.max_new_tokens)
    else:
        outs = generation.generate_same_image(model, job.image, job.prompts, job.masks, job.max_new_tokens,
                                              tokenizer.eos_token_id, batch_size)
    return [decode(tokenizer, o) for o in outs]


def add_sampling_args(ap: argparse.ArgumentParser, seed: int, authors: str) -> None:
    """``--temperature`` (0, the default: greedy), ``--top-p``, ``--seed``: a benchmark's own sampling as an option
    (``authors``: how its authors ran it, for the help)."""
    ap.add_argument("--temperature", type=float, default=0.0, help=f"0: greedy (default); {authors}")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=seed, help="sampling seed of every question")


def sampling_of(args) -> Sampling:
    """The flags of :func:`add_sampling_args`, checked before the model loads (a :func:`fail` naming them)."""
    if not args.temperature >= 0 or not 0 < args.top_p <= 1:
        fail(f"--temperature must be >= 0 and --top-p in (0, 1], got {args.temperature} and {args.top_p}")
    if args.temperature > 0 and args.naive:
        fail("--naive decodes greedily only; leave out --naive or --temperature")
    return Sampling(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                    seed=args.seed)


def answer_questions(engine: RegionEngine, image, asked: Sequence[Question], args, sampling: Sampling) -> List[str]:
    """Answers of one image's questions: greedy, as one job (:func:`answer`: batched, the shared prefix once);
    sampled, one job per question, so that its seed alone decides its answer, whatever the chunk, the resume point or
    the batch size."""
    if sampling.temperature == 0:
        return answer(engine, prepare(engine, image, asked, args.max_new_tokens), args.batch_size, args.naive)
    return [engine.answer(replace(prepare(engine, image, [q], args.max_new_tokens), sampling=sampling))[0].strip()
            for q in asked]


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
