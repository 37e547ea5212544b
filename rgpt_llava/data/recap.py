"""RecapD: two-stage region caption generation with a LLaVA / RGPT model (paper Sec. 3.3); ``docs/RECAPD.md``.

    python -m rgpt_llava.data.recap --model-path P [--model-base B] --annotations COCO_STYLE.json \\
        --image-folder DIR --out recap.jsonl [--clip-model PATH --min-clip-score S] [--context-margin 0.1] \\
        [--batch-size N] [--num-chunks N --chunk-idx K] [--seed S] [--device cpu|cuda] [--max-new-tokens N]

Stage 1 captions every image ("Describe the image in detail." or one of 9 other variants); stage 2 captions every
annotated region from its crop, prompted "In the context of the entire image, <GlobalCaption>, describe the
<ClassName> in the close-up region in detail." (or one of 9 other variants). A CLIP model scores each crop against
its caption; rows under ``--min-clip-score`` are counted and left out. The output rows are the input of
``python -m rgpt_llava.data.build recapd`` (``docs/DATA.md``), one JSON object per line, flushed as written.

Resume: rows already in ``--out`` (by ``(image_id, ann_id)``) are not generated again; global captions and rejected
regions are kept in the sidecar ``OUT.state.jsonl`` so a resume regenerates neither. A line cut by a crash at the
end of either file is dropped and regenerated.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rgpt_llava.data.common import CocoIndex, DataError, Stats, box_region, clean_text, iter_progress, rng_for
from rgpt_llava.jsonl import JsonFileError, read_resumable_jsonl
from rgpt_llava.paths import parse_args_checked
from rgpt_llava.prompt import DEFAULT_CONV_MODE, build_prompt, check_conv_mode, with_image
from rgpt_llava.serve.engine import RegionEngine

PROMPTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recap_prompts.json")
GLOBAL_SLOT, CLASS_SLOT = "<GlobalCaption>", "<ClassName>"

# (images, prompts) -> captions; (crops, captions) -> scores
Generator = Callable[[Sequence[Any], Sequence[str]], List[str]]
Scorer = Callable[[Sequence[Any], Sequence[str]], List[float]]


# ----------------------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------------------
def load_prompts(path: str = PROMPTS_FILE) -> Dict[str, List[str]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = {"global": list(data["global"]), "region": list(data["region"])}
    for p in out["region"]:
        if p.count(GLOBAL_SLOT) != 1 or p.count(CLASS_SLOT) != 1:
            raise ValueError(f"{path}: region prompt without exactly one {GLOBAL_SLOT} and one {CLASS_SLOT}: {p!r}")
    return out


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def global_variant(seed: int, image_id: Any, n: int) -> int:
    """The stage-1 prompt variant of an image: a function of (seed, image_id) only (sharding / resume-proof)."""
    return rng_for(seed, "recap", "global", _key(image_id)).randrange(n)


def region_variant(seed: int, image_id: Any, ann_id: Any, n: int) -> int:
    return rng_for(seed, "recap", "region", _key(image_id), _key(ann_id)).randrange(n)


def class_name(category: dict) -> str:
    """The annotation's category ``name``, underscores read as spaces (LVIS / V3Det write ``hot_dog``)."""
    return clean_text(str(category.get("name", "")).replace("_", " ")) or "object"


def region_prompt(template: str, global_caption: str, name: str) -> str:
    """``template`` with the slots filled: the global caption (whitespace collapsed, trailing period dropped so the
    sentence goes on with ", describe ...") and the class name."""
    caption = clean_text(global_caption).rstrip(" .")
    return template.replace(GLOBAL_SLOT, caption).replace(CLASS_SLOT, name)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------------
def crop_box(bbox: Sequence[float], size: Tuple[int, int], margin: float) -> Tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` grown by ``margin`` x (w, h) on every side, clipped to the image, as integer pixel edges
    ``(x1, y1, x2, y2)`` (at least 1 px wide and high)."""
    x, y, w, h = (float(v) for v in bbox)
    W, H = size
    x1, y1 = max(0, math.floor(x - margin * w)), max(0, math.floor(y - margin * h))
    x2, y2 = min(W, math.ceil(x + w + margin * w)), min(H, math.ceil(y + h + margin * h))
    x1, y1 = min(x1, W - 1), min(y1, H - 1)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


# ----------------------------------------------------------------------------------------------------------------------
# Model: generation with LLaVA's conversation templates
# ----------------------------------------------------------------------------------------------------------------------
class ImageOnlyModel:
    """A plain LLaVA model behind RGPT's interface, without regions (composition: every other attribute is the
    LLaVA model's): RecapD captions whole images and crops, so a LLaVA checkpoint serves it as an RGPT one does."""

    def __init__(self, model):
        self.__dict__["llava"] = model

    def __getattr__(self, name):
        return getattr(self.llava, name)

    def merge_size(self) -> Tuple[int, int]:
        side = self.llava.get_vision_tower().num_patches_per_side
        return side, side

    region_map_size = merge_size     # masks are never made: no region is ever passed

    def encode_images_and_regions(self, images, region_masks=None):
        if region_masks is not None and any(m is not None and len(m) for m in region_masks):
            raise ValueError("a plain LLaVA checkpoint has no region encoder")
        return self.llava.encode_images(images), [None] * images.shape[0]


class CaptionEngine(RegionEngine):
    """:class:`RegionEngine` that also holds a plain LLaVA checkpoint (:class:`ImageOnlyModel`): RecapD's captioner
    is often LLaVA itself (paper Sec. 3.3)."""

    def __init__(self, tokenizer, model, image_processor, context_len=None, **kwargs):
        if not hasattr(model, "encode_images_and_regions"):
            model = ImageOnlyModel(model)
        super().__init__(tokenizer, model, image_processor, context_len, **kwargs)


class LlavaGenerator:
    """Greedy, batched captions of any LLaVA / RGPT checkpoint through the request path of every entry point:
    ``RegionEngine.load`` (the padding side too), each (image, prompt) checked and encoded by ``engine.prepare``,
    the batch decoded by :mod:`rgpt_llava.generation` (each prompt on its own image); prompts in
    ``conv_templates[conv_mode]``."""

    def __init__(self, model_path: str, model_base: Optional[str] = None, device: str = "cpu",
                 conv_mode: str = DEFAULT_CONV_MODE, max_new_tokens: int = 512, load_4bit: bool = False,
                 load_8bit: bool = False):
        try:
            check_conv_mode(conv_mode)
        except ValueError as e:
            raise ValueError(f"--conv-mode {e}") from None
        self.engine = CaptionEngine.load(model_path, model_base, device=device, load_4bit=load_4bit,
                                         load_8bit=load_8bit)
        self.engine.model.eval()
        self.device, self.conv_mode, self.max_new_tokens = device, conv_mode, max_new_tokens
        self.name = os.path.basename(os.path.normpath(model_path))

    def prompt(self, text: str) -> str:
        from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
        image = DEFAULT_IMAGE_TOKEN
        if getattr(self.engine.model.config, "mm_use_im_start_end", False):
            image = DEFAULT_IM_START_TOKEN + image + DEFAULT_IM_END_TOKEN
        return build_prompt([("user", with_image(text, image))], self.conv_mode)

    def __call__(self, images: Sequence[Any], prompts: Sequence[str]) -> List[str]:
        from rgpt_llava import generation
        from rgpt_llava.serve.engine import Sampling
        from rgpt_llava.serve.inputs import InputError
        engine = self.engine
        sampling = Sampling(temperature=0.0, max_new_tokens=self.max_new_tokens)
        try:
            jobs = [engine.prepare(image, [(self.prompt(p), [])], sampling) for image, p in zip(images, prompts)]
        except InputError as e:
            raise DataError(f"RecapD prompt: {e}") from None
        out = generation.generate_same_image(engine.model, [j.image for j in jobs], [j.prompts[0] for j in jobs],
                                             None, min(j.max_new_tokens for j in jobs),
                                             engine.tokenizer.eos_token_id, batch_size=len(jobs))
        return [clean_text(engine.tokenizer.decode(o, skip_special_tokens=True)) for o in out]


# ----------------------------------------------------------------------------------------------------------------------
# Resumable output
# ----------------------------------------------------------------------------------------------------------------------
def _read_jsonl(path: str) -> List[dict]:
    """Rows written so far (a line cut by a crash is dropped; see rgpt_llava.jsonl)."""
    try:
        return read_resumable_jsonl(path)
    except JsonFileError as e:
        raise DataError(f"{e}; fix or delete the file to resume") from None


class JsonlAppender:
    def __init__(self, path: Optional[str]):
        self.path = path
        self._f = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._f = open(path, "a", encoding="utf-8")

    def write(self, obj: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def state_path(out: str) -> str:
    return out + ".state.jsonl"


# ----------------------------------------------------------------------------------------------------------------------
# Planning: which regions of which images
# ----------------------------------------------------------------------------------------------------------------------
def split_chunks(items: Sequence, n: int, k: int) -> List:
    """Chunk ``k`` of ``n`` contiguous, balanced chunks (sizes differ by at most 1; LLaVA's ``get_chunk`` takes
    ``ceil(len / n)`` per chunk and can leave the last chunks empty, e.g. 4 images in 3 chunks)."""
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--chunk-idx {k} must be in 0..{n - 1} (--num-chunks {n})")
    return list(items[len(items) * k // n:len(items) * (k + 1) // n])


def plan(index: CocoIndex, stats: Stats, num_chunks: int = 1, chunk_idx: int = 0) -> List[Tuple[Any, List[dict]]]:
    """``[(image_id, [annotation, ...]), ...]`` of this chunk: images with annotations in file order, partitioned
    into contiguous chunks; annotations with an unusable box are counted skips."""
    image_ids = [i for i in index.images if index.anns_by_image.get(i)]
    stats.info["images with annotations"] = len(image_ids)
    stats.info["annotations"] = len(index.anns)
    out = []
    for image_id in split_chunks(image_ids, num_chunks, chunk_idx):
        anns = []
        for ann in index.anns_by_image[image_id]:
            item = f"annotation {ann['id']} (image {image_id})"
            bbox = box_region(ann.get("bbox"), index.size(image_id), stats, item)
            if bbox is not None:
                anns.append(dict(ann, bbox=bbox))
        if anns:
            out.append((image_id, anns))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------
def _resume_state(out: str) -> Tuple[set, Dict[str, dict]]:
    """``(done, global captions)`` of an earlier run: the (image, annotation) keys already written or rejected, and
    each image's stage-1 caption (in ``out`` and its sidecar)."""
    done = {(_key(r.get("image_id")), _key(r.get("ann_id"))) for r in _read_jsonl(out)}
    globals_: Dict[str, dict] = {}
    for r in _read_jsonl(out) + _read_jsonl(state_path(out)):
        if r.get("global_caption") is not None:
            globals_.setdefault(_key(r.get("image_id")),
                                {"caption": r["global_caption"], "variant": r.get("global_prompt_variant")})
        if r.get("rejected"):
            done.add((_key(r.get("image_id")), _key(r.get("ann_id"))))
    return done, globals_


class _RecapRun:
    """One run's state and its steps: open a batch of images, caption the images (stage 1), then their regions
    (stage 2), scoring and writing each row."""

    def __init__(self, index: CocoIndex, image_folder: str, out: str, generator: Generator, scorer: Optional[Scorer],
                 min_clip_score: Optional[float], context_margin: float, batch_size: int, seed: int,
                 rejected_out: Optional[str], model_name: str, stats: Stats, on_row: Optional[Callable[[dict], None]],
                 globals_: Dict[str, dict], prompts: Dict[str, List[str]]):
        self.index, self.image_folder, self.generator, self.scorer = index, image_folder, generator, scorer
        self.min_clip_score, self.context_margin, self.batch_size = min_clip_score, context_margin, batch_size
        self.seed, self.model_name, self.stats, self.on_row, self.globals = seed, model_name, stats, on_row, globals_
        self.prompts = prompts
        self.writer, self.state = JsonlAppender(out), JsonlAppender(state_path(out))
        self.rejected_writer = JsonlAppender(rejected_out)
        self.counts: Counter = Counter()
        self.new_rows: List[dict] = []
        self.scores: List[float] = []
        self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.state.close()
        self.rejected_writer.close()

    def open_images(self, batch: Sequence[Tuple[Any, List[dict]]]) -> List[tuple]:
        """``(image_id, file name, image, annotations)`` of the images that can be read; the others are counted skips
        (with their regions)."""
        from PIL import Image
        group = []
        for image_id, anns in batch:
            rel = self.index.file_name(image_id)
            path = os.path.join(self.image_folder, rel)
            item = f"image {image_id} ({rel})"
            if not os.path.isfile(path):
                self.stats.skip("image file not found", item, f"not found in --image-folder {self.image_folder} "
                                                              f"({len(anns)} region(s))")
                self.stats.skip("regions of a missing or unreadable image", item, n=len(anns))
                self.bar.update(len(anns))
                continue
            try:
                image = Image.open(path).convert("RGB")
            except Exception as e:  # PIL raises assorted errors
                self.stats.skip("image file unreadable", item, f"cannot read {path}: {e}")
                self.stats.skip("regions of a missing or unreadable image", item, n=len(anns))
                self.bar.update(len(anns))
                continue
            group.append((image_id, rel, image, anns))
        return group

    def caption_images(self, group: Sequence[tuple]) -> None:
        """Stage 1: global captions of the images that have none yet (batched), kept in the sidecar."""
        need = [x for x in group if _key(x[0]) not in self.globals]
        if not need:
            return
        variants = [global_variant(self.seed, x[0], len(self.prompts["global"])) for x in need]
        caps = self.generator([x[2] for x in need], [self.prompts["global"][v] for v in variants])
        self.counts["global captions generated"] += len(need)
        for x, v, c in zip(need, variants, caps):
            self.globals[_key(x[0])] = {"caption": c, "variant": v}
            self.state.write({"image_id": x[0], "global_caption": c, "global_prompt_variant": v})

    def region_jobs(self, group: Sequence[tuple]) -> List[dict]:
        """Stage 2's inputs: each region's crop (its box grown by the context margin) and prompt."""
        jobs = []
        for image_id, rel, image, anns in group:
            glob = self.globals[_key(image_id)]
            for ann in anns:
                cat = self.index.categories[ann["category_id"]]
                v = region_variant(self.seed, image_id, ann["id"], len(self.prompts["region"]))
                name = class_name(cat)
                box = crop_box(ann["bbox"], image.size, self.context_margin)
                jobs.append(dict(image_id=image_id, rel=rel, ann=ann, crop=image.crop(box), box=box,
                                 size=image.size, variant=v, name=name, glob=glob,
                                 prompt=region_prompt(self.prompts["region"][v], glob["caption"], name)))
        return jobs

    def caption_regions(self, jobs: Sequence[dict]) -> None:
        """Stage 2: region captions (batched), CLIP scores, rows kept, rejected or skipped (empty)."""
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b:b + self.batch_size]
            caps = self.generator([j["crop"] for j in batch], [j["prompt"] for j in batch])
            sc: List[Optional[float]] = [None] * len(batch)
            if self.scorer is not None:
                sc = [float(s) for s in self.scorer([j["crop"] for j in batch], caps)]
            for j, cap, s in zip(batch, caps, sc):
                self.write_row(j, cap, s)

    def write_row(self, j: dict, cap: str, s: Optional[float]) -> None:
        ann = j["ann"]
        row = {"image": j["rel"], "image_id": j["image_id"], "ann_id": ann["id"], "bbox": ann["bbox"],
               "width": j["size"][0], "height": j["size"][1], "category": j["name"],
               "caption": cap, "clip_score": s, "global_caption": j["glob"]["caption"],
               "global_prompt_variant": j["glob"]["variant"], "prompt_variant": j["variant"],
               "prompt": j["prompt"], "crop": list(j["box"]), "source": "recap", "model": self.model_name}
        if ann.get("segmentation") is not None:
            row["segmentation"] = ann["segmentation"]
        if s is not None:
            self.scores.append(s)
        if not cap.strip():
            self.counts["empty captions (not written)"] += 1
            self.stats.skip("empty caption", f"annotation {ann['id']} (image {j['image_id']})",
                            "the model produced an empty caption (not written; a resume retries it)")
        elif self.min_clip_score is not None and s < self.min_clip_score:
            self.counts["rejected"] += 1
            self.rejected_writer.write(row)
            self.state.write({"image_id": j["image_id"], "ann_id": ann["id"], "rejected": True, "clip_score": s})
        else:
            self.counts["kept"] += 1
            self.writer.write(row)
            self.new_rows.append(row)
        self.bar.update(1)
        if self.on_row is not None:
            self.on_row(row)


def run(annotations: str, image_folder: str, out: str, generator: Generator, scorer: Optional[Scorer] = None,
        min_clip_score: Optional[float] = None, context_margin: float = 0.1, batch_size: int = 8,
        num_chunks: int = 1, chunk_idx: int = 0, seed: int = 0, rejected_out: Optional[str] = None,
        model_name: str = "", stats: Optional[Stats] = None, on_row: Optional[Callable[[dict], None]] = None) -> dict:
    """Caption every region of this chunk that ``out`` does not have yet; returns the summary counts."""
    if min_clip_score is not None and scorer is None:
        raise ValueError("--min-clip-score needs --clip-model")
    if context_margin < 0:
        raise ValueError("--context-margin must be >= 0")
    batch_size = max(1, int(batch_size))
    stats = stats or Stats("recap")
    prompts = load_prompts()     # a broken prompt file fails before the annotations are read
    index = CocoIndex(annotations, "COCO-style instances JSON (RecapD input)")
    todo = plan(index, stats, num_chunks, chunk_idx)
    done, globals_ = _resume_state(out)
    job = _RecapRun(index, image_folder, out, generator, scorer, min_clip_score, context_margin, batch_size, seed,
                    rejected_out, model_name, stats, on_row, globals_, prompts)
    pending = []  # (image_id, anns still to caption)
    for image_id, anns in todo:
        left = [a for a in anns if (_key(image_id), _key(a["id"])) not in done]
        job.counts["regions"] += len(anns)
        job.counts["already done"] += len(anns) - len(left)
        if left:
            pending.append((image_id, left))

    job.bar = iter_progress(None, "recap: regions", total=sum(len(a) for _, a in pending))
    try:
        for g in range(0, len(pending), batch_size):
            group = job.open_images(pending[g:g + batch_size])
            job.caption_images(group)
            job.caption_regions(job.region_jobs(group))
    finally:
        job.close()
    stats.flush_warnings()
    job.counts["skipped"] = sum(stats.skipped.values())
    words = [len(r["caption"].split()) for r in job.new_rows]
    return {"counts": job.counts, "stats": stats, "scores": job.scores,
            "avg_words": (sum(words) / len(words)) if words else 0.0, "out": out}


def histogram(scores: Sequence[float], bins: int = 10, width: int = 40) -> List[str]:
    """A text histogram of the scores (equal-width bins between the smallest and the largest)."""
    if not scores:
        return ["  (no scores)"]
    lo, hi = min(scores), max(scores)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int((s - lo) / step))] += 1
    top = max(counts)
    return [f"  [{lo + i * step:+.3f}, {lo + (i + 1) * step:+.3f}) {c:6d} {'#' * round(width * c / top)}"
            for i, c in enumerate(counts)]


def summary(result: dict) -> str:
    c, stats = result["counts"], result["stats"]
    lines = [f"[recap] {result['out']}: regions in this chunk {c['regions']}, already done {c['already done']}, "
             f"kept {c['kept']}, rejected by CLIP {c['rejected']}, skipped {c['skipped']}",
             f"  global captions generated: {c['global captions generated']}",
             f"  average words per caption (this run, kept): {result['avg_words']:.1f}"]
    lines += [f"  input   {k}: {v}" for k, v in stats.info.items()]
    lines += [f"  skipped {k}: {v}" for k, v in stats.skipped.items()]
    lines += [f"  note    {k}: {v}" for k, v in stats.notes.items()]
    lines += ["  clip_score histogram (this run, kept and rejected):"] + histogram(result["scores"])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rgpt_llava.data.recap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="LLaVA or RGPT checkpoint (the captioner)")
    p.add_argument("--model-base", default=None, help="base LLM of a LoRA / stage-1 checkpoint")
    p.add_argument("--annotations", required=True, help="COCO-style instances JSON (images, annotations, categories)")
    p.add_argument("--image-folder", required=True, help="folder the images' file_name is relative to")
    p.add_argument("--out", required=True, help="output JSON Lines (appended to; resumable)")
    p.add_argument("--rejected-out", default=None, help="also write the rows under --min-clip-score here")
    p.add_argument("--clip-model", default=None, help="local CLIPModel folder for the clip_score of every row")
    p.add_argument("--min-clip-score", type=float, default=None, help="leave out rows with a lower clip_score")
    p.add_argument("--context-margin", type=float, default=0.1,
                   help="crop = box grown by this fraction of its width / height on each side (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per stage-1 batch, regions per stage-2 batch")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt-variant choice (default 0)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--conv-mode", default=DEFAULT_CONV_MODE, help="LLaVA conversation template (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--load-8bit", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    # neither output may be --annotations (nor any other file an argument names), nor the other output
    args = parse_args_checked(parser(), argv, ("out", "rejected_out"))
    if args.min_clip_score is not None and args.clip_model is None:
        parser().error("--min-clip-score needs --clip-model")
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser().error(f"--chunk-idx must be in 0..{args.num_chunks - 1}")
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if not os.path.isdir(args.image_folder):
            raise DataError(f"--image-folder {args.image_folder}: no such folder")
        CocoIndex(args.annotations, "COCO-style instances JSON (RecapD input)")  # fail fast, before loading models
        generator = LlavaGenerator(args.model_path, args.model_base, device=args.device, conv_mode=args.conv_mode,
                                   max_new_tokens=args.max_new_tokens, load_4bit=args.load_4bit,
                                   load_8bit=args.load_8bit)
        scorer = None
        if args.clip_model:
            from rgpt_llava.data.clip_score import ClipScorer
            scorer = ClipScorer(args.clip_model, device=args.device)
        result = run(args.annotations, args.image_folder, args.out, generator, scorer,
                     min_clip_score=args.min_clip_score, context_margin=args.context_margin,
                     batch_size=args.batch_size, num_chunks=args.num_chunks, chunk_idx=args.chunk_idx,
                     seed=args.seed, rejected_out=args.rejected_out, model_name=generator.name)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
