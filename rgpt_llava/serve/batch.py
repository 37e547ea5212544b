"""Offline batch inference: a JSON Lines file of requests (an image, its regions, a question) -> a JSON Lines file of
answers, through the HF engine or vLLM.

    python -m rgpt_llava.serve.batch --model-path CKPT --requests in.jsonl --output answers.jsonl [--engine hf|vllm]
        [--image-folder DIR] [--conv-mode vicuna_v1] [--temperature 0 --top-p 1 --max-new-tokens 128 --seed S]
        [--chunk-size 64] [--num-chunks N --chunk-idx K] [--device cpu] [--vllm-option KEY=VALUE ...] [--strict]

A request (one line)::

    {"id": "cat-1", "image": "photos/cat.jpg", "regions": [{"box": [10, 20, 200, 180]}, "mask:masks/cat.png"],
     "prompt": "What is <region1> next to <region2>?", "max_tokens": 64, "temperature": 0, "top_p": 1}

* ``prompt`` (required): the user's question; ``<region>`` / ``<regionN>`` name the regions (docs/SERVING.md). It is
  put in ``--conv-mode``'s conversation template with the image leading it (:mod:`rgpt_llava.prompt`), as the CLI
  and the API do.
* ``image`` (required): a file, relative to ``--image-folder`` (default: the requests file's folder) or absolute.
* ``regions`` (default none): REGION JSON as the API takes it (``{"box": ...}``, ``{"polygon": ...}``,
  ``{"rle": ...}``, ``{"mask": DATA_URL}``; SAM's prompts with ``--sam-model``), or the CLI's text form, whose files
  are read relative to ``--image-folder`` (``"mask:masks/cat.png"``, ``"rle:cat.json"``): the file is the local
  user's, unlike a server's client's.
* ``id`` (default: the line number, 1-based): an integer or a string, unique in the file (``3`` and ``"3"`` are one).
* ``max_tokens``, ``temperature``, ``top_p`` (default: the flags): this request's sampling.

An answer (one line, matched to its request by ``id``; in the requests' order within a run)::

    {"id": "cat-1", "text": "a cat on a sofa", "finish_reason": "stop"}     # "stop" (EOS) or "length"
    {"id": "cat-2", "error": "regions[0]: region 1: box [...] lies outside the 640x480 image"}

Checked before the model loads, each an ``error: ...`` line naming the line, exit 2: the file (a malformed line, a
line that is not an object, a missing ``prompt`` or ``image``, a field of the wrong type or unknown, two lines with
one id) and the flags (``--output`` the same file as ``--requests``, the chunk, the template). A request that cannot
be answered (its image missing or unreadable, a region outside the image, a placeholder without a region, a region no
placeholder names) gets an ``error`` record naming the field, counted in the final summary ("N answered, M refused
(field "error")"); with ``--strict`` the run stops at the first instead (exit 2, naming the line).

Folder-scale runs: ``--num-chunks N --chunk-idx K`` answers the K-th of N contiguous shards (the evaluation steps'
rule, ``rgpt_llava.eval.generate_common.get_chunk``; one process per shard and per GPU, each with its own
``--output``; ``cat`` them after). A run is resumable: ids already in ``--output`` are skipped, a line cut by a crash
at its end is dropped and redone, and each ``--chunk-size`` requests' answers are written (flushed) as soon as they
are generated. Error records count as done; delete their lines to retry them. A tqdm progress bar goes to stderr on
a terminal.

``--engine vllm`` hands each chunk of requests to vLLM at once (continuous batching, docs/VLLM.md) while the next
chunk's images and regions are prepared on a second thread; ``--engine hf`` answers one request after another.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from rgpt_llava.eval.common import EvalInputError, id_key
from rgpt_llava.eval.generate_common import AnswerWriter, get_chunk
from rgpt_llava.jsonl import JsonFileError, read_records
from rgpt_llava.prompt import check_conv_mode, question_answer_prompt
from rgpt_llava.progress import progress_bar
from rgpt_llava.regions.kinds import cli_kind
from rgpt_llava.serve.engine import Job, RegionEngine, Sampling
from rgpt_llava.serve.inputs import InputError, load_image_file, parse_regions
from rgpt_llava.serve.options import (StartupError, add_conv_mode_flag, add_engine_flags, add_model_flags,
                                      check_at_least_one, load_engine, resolve_conv_mode_flag)

FIELDS = ("id", "image", "regions", "prompt", "max_tokens", "temperature", "top_p")


class RequestFileError(ValueError):
    """The requests file cannot be run: the message names the line and the problem."""


@dataclass
class Request:
    """One checked line: ``where`` ("line 3"), its id (as given, or the line number) and its fields."""
    where: str
    id: Union[int, str]
    image: str
    regions: List[Any]
    prompt: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None


def _number(obj: dict, key: str, where: str, integer: bool = False) -> Optional[float]:
    value = obj.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestFileError(f"{where}: field {key!r} must be {'an integer' if integer else 'a number'}, got "
                               f"{value!r}")
    return value


def check_request(obj: dict, where: str, line: int) -> Request:
    """A line's fields checked for their type, and ``max_tokens`` for being at least 1 (the engine would name its own
    parameter, max_new_tokens); the other values are the engine's to judge, per request. ``where`` names the line."""
    unknown = sorted(str(k) for k in obj if k not in FIELDS)
    if unknown:     # a typo ("region") would otherwise drop the regions silently
        raise RequestFileError(f"{where}: unknown field(s) {unknown}; a request has {', '.join(FIELDS)}")
    for key in ("prompt", "image"):
        if key not in obj:
            raise RequestFileError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise RequestFileError(f"{where}: field {key!r} must be a non-empty string, got {obj[key]!r}")
    regions = obj.get("regions", [])
    if not isinstance(regions, list):
        raise RequestFileError(f"{where}: field 'regions' must be a list of REGION, got {type(regions).__name__}")
    rid = obj.get("id", line)
    try:
        id_key(rid)
    except EvalInputError as e:
        raise RequestFileError(f"{where}: field 'id': {e}") from None
    max_tokens = _number(obj, "max_tokens", where, integer=True)
    if max_tokens is not None and max_tokens < 1:
        raise RequestFileError(f"{where}: field 'max_tokens' must be at least 1, got {max_tokens}")
    return Request(where, rid, obj["image"], regions, obj["prompt"], max_tokens,
                   _number(obj, "temperature", where), _number(obj, "top_p", where))


def read_requests(path: str) -> List[Request]:
    """Every line of the requests file checked, ids unique; a problem is a :class:`RequestFileError`."""
    try:
        records = read_records(path, jsonl=True)
    except JsonFileError as e:
        raise RequestFileError(f"--requests {e}") from None
    requests, seen = [], {}
    for where, obj in records:
        request = check_request(obj, f"--requests {path}, {where}", int(where.split()[1]))
        key = id_key(request.id)
        if key in seen:
            raise RequestFileError(f"--requests {path}: id {request.id!r} is on {seen[key]} and {where} (a line "
                                   f"without 'id' has its line number); ids must be unique")
        seen[key] = where
        request.where = where
        requests.append(request)
    return requests


# ---------------------------------------------------------------------------------------------------------------------
# one request -> a job
# ---------------------------------------------------------------------------------------------------------------------
def region_specs(regions: Sequence[Any], folder: str) -> List[Any]:
    """The regions with the files of the CLI's text forms (``mask:PATH.png``) found in ``folder``."""
    out = []
    for spec in regions:
        if isinstance(spec, str):
            prefix, sep, body = spec.strip().partition(":")
            kind = cli_kind(prefix.strip().lower())
            if sep and kind is not None and "PATH" in kind.cli and not os.path.isabs(body.strip()):
                spec = f"{prefix}:{os.path.join(folder, body.strip())}"
        out.append(spec)
    return out


def prepare(engine: RegionEngine, request: Request, args: argparse.Namespace) -> Job:
    """The request checked and encoded by the engine (the CLI's and the API's path); InputError names the field."""
    image = load_image_file(os.path.join(args.image_folder, request.image), "image").convert("RGB")
    regions = parse_regions([(spec, f"regions[{k}]") for k, spec in
                             enumerate(region_specs(request.regions, args.image_folder))],
                            image.size, engine.max_regions, image=image, sam=engine.sam, cli=True)
    sampling = Sampling(temperature=args.temperature if request.temperature is None else request.temperature,
                        top_p=args.top_p if request.top_p is None else request.top_p,
                        max_new_tokens=args.max_new_tokens if request.max_tokens is None else request.max_tokens,
                        seed=args.seed)
    prompt = question_answer_prompt([(request.prompt, None)], args.conv_mode)
    return engine.prepare(image, [(prompt, regions)], sampling, param="prompt")


def prepare_all(engine: RegionEngine, requests: Sequence[Request], args) -> List[Union[Job, InputError]]:
    out = []
    for request in requests:
        try:
            out.append(prepare(engine, request, args))
        except InputError as e:
            out.append(e)
    return out


def answers(engine: RegionEngine, jobs: Sequence[Job]) -> List[Tuple[str, Optional[str]]]:
    """(text, finish reason) of each one-choice job (``answer_many_deltas``: vLLM's engine takes them all at once,
    the HF engine one after another)."""
    return [(deltas[0].text, deltas[0].finish_reason) for deltas in engine.answer_many_deltas(jobs)]


# ---------------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder: resolves SAM's prompts (points, scribbles, snapped boxes) in the regions")
    add_engine_flags(p)
    p.add_argument("--requests", required=True, metavar="IN.jsonl", help="one request per line (see above)")
    p.add_argument("--output", required=True, metavar="OUT.jsonl",
                   help="the answers, appended; ids already there are skipped (resume)")
    p.add_argument("--image-folder", default=None, help="where the images are (default: the requests file's folder)")
    add_conv_mode_flag(p)
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=64,
                   help="requests generated together and written together (vLLM batches them; default 64)")
    p.add_argument("--num-chunks", type=int, default=1, help="shards of the requests file (default 1)")
    p.add_argument("--chunk-idx", type=int, default=0, help="the shard this run answers, 0..N-1")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first request that cannot be answered (exit 2) instead of an error record")
    return p


def check_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    from rgpt_llava.paths import parse_args_checked
    args = parse_args_checked(parser, argv, outputs=("output",))
    check_at_least_one(parser, args, "chunk_size", "num_chunks", "max_new_tokens")
    if not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx {args.chunk_idx} must be in 0..{args.num_chunks - 1} (--num-chunks "
                     f"{args.num_chunks})")
    try:
        check_conv_mode(resolve_conv_mode_flag(args))
    except ValueError as e:
        parser.error(f"--conv-mode {e}")
    try:
        Sampling(args.temperature, args.top_p).sampler()
    except ValueError as e:
        parser.error(f"--{str(e).split()[0].replace('_', '-')} {e}")
    if args.image_folder is None:
        args.image_folder = os.path.dirname(os.path.abspath(args.requests))
    elif not os.path.isdir(args.image_folder):
        parser.error(f"--image-folder {args.image_folder}: no such folder")
    return args


class Stop(Exception):
    """--strict met a request that cannot be answered."""


def run(args: argparse.Namespace, log=print) -> Tuple[int, int, int, float]:
    """Answers this shard's requests not yet in ``--output``: (answered, refused, already there, seconds from the
    model loaded to the last answer written)."""
    requests = get_chunk(read_requests(args.requests), args.num_chunks, args.chunk_idx)
    with AnswerWriter(args.output, key="id") as writer:
        todo = [r for r in requests if not writer.is_done(r.id)]
        skipped = len(requests) - len(todo)
        if not todo:
            return 0, 0, skipped, 0.0
        engine = load_engine(args)
        start = time.perf_counter()
        answered = refused = 0
        # vLLM generates in its own process: the next chunk is prepared here meanwhile (~10 ms of CPU a request).
        # The HF engine would only compete with itself for the cores.
        overlap = ThreadPoolExecutor(max_workers=1) if args.engine == "vllm" else None
        chunks = [todo[i:i + args.chunk_size] for i in range(0, len(todo), args.chunk_size)]
        bar = progress_bar("requests", total=len(requests), initial=skipped, unit="req")
        try:
            pending = overlap.submit(prepare_all, engine, chunks[0], args) if overlap else None
            for n, chunk in enumerate(chunks):
                prepared = pending.result() if overlap else prepare_all(engine, chunk, args)
                # --strict: the requests before the first refused one are still answered, then the run stops
                bad = next((k for k, p in enumerate(prepared) if isinstance(p, InputError)), None) if args.strict \
                    else None
                if bad is not None:
                    chunk, prepared, stop = chunk[:bad], prepared[:bad], (chunk[bad], prepared[bad])
                elif overlap and n + 1 < len(chunks):
                    pending = overlap.submit(prepare_all, engine, chunks[n + 1], args)
                jobs = [p for p in prepared if not isinstance(p, InputError)]
                results = answers(engine, jobs) if jobs else []
                if len(results) != len(jobs):    # never write an answer against another request's id
                    raise RuntimeError(f"{len(jobs)} requests generated, {len(results)} answers came back")
                results = iter(results)
                for request, p in zip(chunk, prepared):
                    if isinstance(p, InputError):
                        writer.write({"id": request.id, "error": str(p)})
                        refused += 1
                    else:
                        text, reason = next(results)
                        writer.write({"id": request.id, "text": text, "finish_reason": reason})
                        answered += 1
                bar.update(len(chunk))
                seconds = time.perf_counter() - start
                if bad is not None:
                    raise Stop(f"--requests {args.requests}, {stop[0].where} (id {stop[0].id!r}): {stop[1]} "
                               f"(--strict: stopped; {answered} answered in this run)")
        finally:
            bar.close()
            if overlap:
                overlap.shutdown(wait=True, cancel_futures=True)
            close = getattr(engine, "close", None)
            if close is not None:
                close()
    return answered, refused, skipped, seconds


def main(argv=None) -> int:
    args = check_args(build_parser(), argv)
    try:
        answered, refused, skipped, seconds = run(args)
    except (RequestFileError, EvalInputError, StartupError, Stop) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    there = f", {skipped} already in the output" if skipped else ""
    pace = f" in {seconds:.1f} s after loading ({(answered + refused) / seconds:.2f} requests/s)" if seconds else ""
    print(f"{answered} answered, {refused} refused (field \"error\"){there}{pace}: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":      # vLLM spawns its engine process, which imports this module again
    sys.exit(main())
