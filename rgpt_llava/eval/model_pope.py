"""Generation step of POPE (image-level yes/no questions; no regions) -> answers for ``pope``.

python -m rgpt_llava.eval.model_pope --model-path P --question-file llava_pope_test.jsonl --image-folder val2014 \
    --answers-file pope.jsonl [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions: LLaVA's ``{"question_id", "image", "text", "category"?}``; the prompt is ``text`` plus LLaVA's
"Answer the question using a single word or phrase." (as ``scripts/v1_5/eval/pope.sh``; ``--no-single-word`` drops
it). Answers: ``{"question_id", "prompt", "text", "category"?}``.
"""
import argparse

from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, answer, by_image, check_run_args,
                                             conv_prompt, fail, get_chunk, load_engine, load_image, log, prepare,
                                             question, read_question_file, run_main)

SINGLE_WORD = "Answer the question using a single word or phrase."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    ap.add_argument("--no-single-word", action="store_true")
    add_common_args(ap)
    ap.set_defaults(max_new_tokens=8)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    qs = read_question_file(args.question_file)
    for q in qs:
        for f in ("image", "text"):
            if f not in q:
                fail(f"{q['_where']}: missing field '{f}'")
    qs = get_chunk(qs, args.num_chunks, args.chunk_idx)
    engine = load_engine(args)
    with AnswerWriter(args.answers_file) as w:
        for name, group in by_image(qs, lambda q: q["image"], "POPE"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = load_image(args.image_folder, name, todo[0]["_where"])
            texts = [q["text"] if args.no_single_word else q["text"] + "\n" + SINGLE_WORD for q in todo]
            job = prepare(engine, img, [question(args, img, conv_prompt([(t, None)], args.conv_mode), [],
                                                 q["_where"]) for q, t in zip(todo, texts)], args.max_new_tokens)
            for q, t, a in zip(todo, texts, answer(engine, job, args.batch_size, args.naive)):
                rec = {"question_id": q["question_id"], "prompt": t, "text": a}
                if "category" in q:
                    rec["category"] = q["category"]
                w.write(rec)
        log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
