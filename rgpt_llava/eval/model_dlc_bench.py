"""Generation step of DLC-Bench (Describe Anything, NVlabs/describe-anything) -> answers for ``dlc_bench``.

python -m rgpt_llava.eval.model_dlc_bench --model-path P --annotation-file DLC-bench/annotations.json \
    --image-folder DLC-bench/images --answers-file dlc.jsonl [--prompt "... <region1> ..."] \
    [--temperature 0.2 --top-p 1 --seed 123] [--num-chunks N --chunk-idx K] [--device cpu]

The benchmark's ``annotations.json`` is COCO-style (its own ``get_model_outputs.py`` reads it with pycocotools): every
annotation is one region to describe, its mask the annotation's ``segmentation`` (polygons or RLE). As there, the
regions are taken image by image in the file's image order, each image's annotations in file order; the question id
is the annotation id (the key of the benchmark's ``qa.json`` and ``class_names.json``).

Prompt: RegionGPT's own detailed-description instruction (supplementary Table 22, first prompt), the task RGPT is
trained on; DAM's query is "<image>\\nDescribe the masked region in detail." -- ``--prompt "Describe the masked region
<region1> in detail."`` is its closest form with a region token. Greedy by default; ``--temperature T`` samples (DAM's
script samples at 0.2, top-p unset, seed 123) with ``--seed`` for each question, so an answer does not depend on the
chunking or on a resume. ``--max-new-tokens`` defaults to DAM's 512.

Answers (JSONL): ``{"question_id": <annotation id>, "text", "image"}``.
"""
import argparse
from typing import List

from rgpt_llava.data.instructions import fill, load_pools
from rgpt_llava.eval.common import read_json
from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, add_sampling_args, answer_questions,
                                             by_image, check_run_args, conv_prompt, fail, get_chunk, load_engine,
                                             load_image, log, question, run_main, sampling_of)

DEFAULT_PROMPT = fill(load_pools().prompts["detailed_description"][0], ["<region1>"])   # Table 22, first prompt
DAM_MAX_NEW_TOKENS = 512        # get_model_outputs.py


def read_regions(path: str) -> List[dict]:
    """One question per annotation of the COCO-style file, in the benchmark's order (images in file order, each
    image's annotations in file order); a malformed image or annotation is an error naming it."""
    data = read_json(path, "annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        fail(f"annotation file {path}: expected a COCO-style object with 'images' and 'annotations' lists")
    images = {}
    for i, im in enumerate(data["images"]):
        where = f"annotation file {path}, images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            fail(f"{where}: an image needs 'id' and 'file_name', got {str(im)[:200]}")
        images.setdefault(im["id"], im)
    per_image = {k: [] for k in images}
    seen = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation file {path}, annotations[{i}]"
        if not isinstance(ann, dict) or "id" not in ann:
            fail(f"{where}: an annotation needs an 'id', got {str(ann)[:200]}")
        where = f"{where} (annotation id {ann['id']!r})"
        if ann.get("image_id") not in images:
            fail(f"{where}: image_id {ann.get('image_id')!r} is not in the file's images")
        if not ann.get("segmentation"):
            fail(f"{where}: no 'segmentation' (DLC-Bench describes masks)")
        if str(ann["id"]) in seen:
            fail(f"{where}: duplicate annotation id (first at annotations[{seen[str(ann['id'])]}])")
        seen[str(ann["id"])] = i
        name = images[ann["image_id"]]["file_name"]
        per_image[ann["image_id"]].append({"question_id": ann["id"], "image": name,
                                           "segmentation": ann["segmentation"],
                                           "_where": f"{where}, image {name!r}"})
    return [q for qs in per_image.values() for q in qs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotation-file", required=True, help="DLC-Bench annotations.json (COCO-style, masks)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="question with <region1>")
    add_sampling_args(ap, seed=123, authors="DAM samples at 0.2 (seed 123)")
    add_common_args(ap)
    ap.set_defaults(max_new_tokens=DAM_MAX_NEW_TOKENS)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    if "<region1>" not in args.prompt:
        fail(f"--prompt must name the region as <region1>: {args.prompt!r}")
    sampling = sampling_of(args)
    qs = get_chunk(read_regions(args.annotation_file), args.num_chunks, args.chunk_idx)
    engine = load_engine(args)
    prompt = conv_prompt([(args.prompt, None)], args.conv_mode)
    with AnswerWriter(args.answers_file) as w:
        for name, group in by_image(qs, lambda q: q["image"], "descriptions"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = load_image(args.image_folder, name, todo[0]["_where"])
            asked = [question(args, img, prompt, [{"segmentation": q["segmentation"]}], q["_where"], engine.aspect)
                     for q in todo]
            texts = answer_questions(engine, img, asked, args, sampling)
            for q, text in zip(todo, texts):
                w.write({"question_id": q["question_id"], "text": text, "image": name})
        log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
