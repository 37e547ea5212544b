"""Generation step of LVIS / PACO open-vocabulary region classification (Osprey's protocol) -> answers for
``lvis_paco``.

python -m rgpt_llava.eval.model_lvis_paco --model-path P --question-file lvis_val_1k_category.json \
    --image-folder coco_images --answers-file lvis.jsonl [--prompt "..."] [--temperature 0.2 [--seed S]] \
    [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Reads Osprey's benchmark JSON itself (no conversion step): a list of images ``{"file_name", "height", "width",
"categories": [name, ...], "annotations": [{"segmentation": polygons | RLE}, ...]}``. Every region is one question
(Osprey asks each region in a fresh conversation): "What is the category of <region1>? Using only one word or
phrase." with the region's mask. ``file_name`` is found under ``--image-folder`` (Osprey's ``coco-all-imgs``: COCO
train2017 and val2017 images in one folder). Greedy by default; ``--temperature 0.2`` is Osprey's sampling.

Answers: ``{"question_id": "<image index>_<region index>", "text", "file_name", "category"}``. Every region of the
chunk is checked before the model loads: a malformed annotation (bad polygon or RLE, a mask outside the image or
empty, a missing category) fails naming the image and the region.
"""
import argparse
from typing import Dict

from rgpt_llava.eval.common import EvalInputError
from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, add_sampling_args, answer_questions,
                                             by_image, check_run_args, conv_prompt, fail, get_chunk, load_engine,
                                             load_image, log, question, run_main, sampling_of)
from rgpt_llava.eval.lvis_paco import QUESTION, read_benchmark
from rgpt_llava.regions.kinds import parse_region


def region_specs(regions) -> Dict[str, dict]:
    """``{question_id: {"segmentation", "bbox"}}``: every region's segmentation rasterised against its image's size
    from the file (polygon inside the image, RLE of the image's size, a non-empty mask) -- a malformed one fails
    now, naming it, not hours into the run -- with its tight COCO box (the text of ``--regions-as-text``; the
    model gets the mask, a segmentation outranks a box)."""
    out = {}
    for r in regions:
        try:
            x1, y1, x2, y2 = parse_region({"segmentation": r.segmentation}, 0, (r.width, r.height)).box
        except (ValueError, FileNotFoundError) as e:
            fail(f"{r.where}: {e}")
        out[r.question_id] = {"segmentation": r.segmentation, "bbox": [x1, y1, x2 - x1, y2 - y1]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", "--annotation-file", dest="question_file", required=True,
                    help="Osprey's benchmark JSON (lvis_val_1k_category.json, paco_val_1k_category.json)")
    ap.add_argument("--prompt", default=QUESTION, help="question with <region1> (default: Osprey's)")
    add_sampling_args(ap, seed=0, authors="Osprey samples at 0.2")
    add_common_args(ap)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    if "<region1>" not in args.prompt:
        fail(f"--prompt must hold the placeholder <region1>, got {args.prompt!r}")
    sampling = sampling_of(args)
    try:
        regions = read_benchmark(args.question_file, "question file")
    except EvalInputError as e:
        fail(str(e))
    regions = get_chunk(regions, args.num_chunks, args.chunk_idx)
    specs = region_specs(regions)
    engine = load_engine(args)
    prompt = conv_prompt([(args.prompt, None)], args.conv_mode)
    with AnswerWriter(args.answers_file) as w:
        for _, group in by_image(regions, lambda r: r.image_index, "lvis/paco"):
            todo = [r for r in group if not w.is_done(r.question_id)]
            if not todo:
                continue
            first = todo[0]
            img = load_image(args.image_folder, first.file_name, first.where)
            if img.size != (first.width, first.height):
                # the polygons and RLEs are in the file's pixel frame: another image size would misplace them
                fail(f"{first.image_where}: the image file is {img.size[0]}x{img.size[1]}, the "
                     f"benchmark says width {first.width}, height {first.height}")
            asked = [question(args, img, prompt, [specs[r.question_id]], r.where, engine.aspect) for r in todo]
            texts = answer_questions(engine, img, asked, args, sampling)
            for r, text in zip(todo, texts):
                w.write({"question_id": r.question_id, "text": text, "file_name": r.file_name,
                         "category": r.category})
        log(f"{w.num_written} answers written to {args.answers_file} ({len(regions)} regions in chunk "
            f"{args.chunk_idx}/{args.num_chunks})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
