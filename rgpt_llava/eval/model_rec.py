"""Generation step of referring expression comprehension among candidates -> answers for ``rec``.

python -m rgpt_llava.eval.model_rec --model-path P --question-file refcocog_val_rec.jsonl --image-folder train2014 \
    --answers-file rec.jsonl [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions: written by ``python -m rgpt_llava.eval.rec build`` (``candidates[i]`` is shown as ``<region{i+1}>``).
Answers: ``{"question_id", "text": "Region [x]", "candidates", "gt_bbox"}`` (self-contained for the scorer).
"""
import argparse

from rgpt_llava.data.instructions import rec_suffix, region_list, region_placeholder
from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, answer, by_image, check_run_args,
                                             conv_prompt, fail, get_chunk, load_engine, load_image, log, prepare,
                                             question, read_question_file, run_main)


def rec_question(n: int, expression: str) -> str:
    regs = region_list([region_placeholder(i + 1) for i in range(n)])
    return f'From the provided masks denoted by {regs}, which one fits "{expression}"? {rec_suffix()}'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    add_common_args(ap)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    qs = read_question_file(args.question_file)
    for q in qs:
        for f in ("candidates", "expression"):
            if f not in q:
                fail(f"{q['_where']}: missing field '{f}' (write questions with `python -m rgpt_llava.eval.rec "
                     f"build`)")
        if not q["candidates"]:
            fail(f"{q['_where']}: no candidates")
    qs = get_chunk(qs, args.num_chunks, args.chunk_idx)
    engine = load_engine(args)
    with AnswerWriter(args.answers_file) as w:
        for name, group in by_image(qs, lambda q: q.get("file_name") or q.get("image"), "REC"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = load_image(args.image_folder, name, todo[0]["_where"])
            job = prepare(engine, img, [
                question(args, img, conv_prompt([(rec_question(len(q["candidates"]), q["expression"]), None)],
                                                args.conv_mode),
                         [{"bbox": c} for c in q["candidates"]], q["_where"], engine.aspect) for q in todo],
                args.max_new_tokens)
            for q, text in zip(todo, answer(engine, job, args.batch_size, args.naive)):
                rec = {"question_id": q["question_id"], "text": text, "candidates": q["candidates"]}
                if "gt_bbox" in q:
                    rec["gt_bbox"] = q["gt_bbox"]
                w.write(rec)
        log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
