"""Generation step of region captioning (RefCOCOg / Visual Genome) -> answers for ``caption``.

python -m rgpt_llava.eval.model_caption --model-path P --question-file questions.jsonl --image-folder DIR \
    --answers-file cap.jsonl [--prompt "..."] [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions (JSONL): ``{"question_id", "image" (or "file_name"), "bbox": [x, y, w, h], "segmentation"?}``
(``python -m rgpt_llava.eval.caption build-refs --questions-out`` writes them for RefCOCOg). The region is the
segmentation when given, else the box. Answers: ``{"question_id", "text", "image"}``.
"""
import argparse

from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, answer, by_image, check_run_args,
                                             conv_prompt, fail, get_chunk, load_engine, load_image, log, prepare,
                                             question, read_question_file, run_main)

DEFAULT_PROMPT = "Provide a brief caption for the area indicated by <region1>."   # Table 21, first prompt


def image_name(q):
    return q.get("image") or q.get("file_name")


def region_of(q):
    if "segmentation" in q and q["segmentation"]:
        return {"segmentation": q["segmentation"]}
    if "bbox" not in q:
        fail(f"{q['_where']}: missing field 'bbox' (or 'segmentation')")
    return {"bbox": q["bbox"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="question with <region1>")
    add_common_args(ap)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    qs = get_chunk(read_question_file(args.question_file), args.num_chunks, args.chunk_idx)
    engine = load_engine(args)
    prompt = conv_prompt([(args.prompt, None)], args.conv_mode)
    with AnswerWriter(args.answers_file) as w:
        for name, group in by_image(qs, image_name, "captions"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = load_image(args.image_folder, name, todo[0]["_where"])
            # the box text of --regions-as-text needs the box, also where a segmentation is given
            job = prepare(engine, img, [question(args, img, prompt, [{"bbox": q["bbox"]} if args.regions_as_text
                                                                    and "bbox" in q else region_of(q)],
                                                 q["_where"], engine.aspect) for q in todo], args.max_new_tokens)
            for q, text in zip(todo, answer(engine, job, args.batch_size, args.naive)):
                w.write({"question_id": q["question_id"], "text": text, "image": name})
        log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
