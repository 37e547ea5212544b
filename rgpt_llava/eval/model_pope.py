"""Generation step of POPE (image-level yes/no questions; no regions) -> answers for ``pope``.

python -m rgpt_llava.eval.model_pope --model-path P --question-file llava_pope_test.jsonl --image-folder val2014 \
    --answers-file pope.jsonl [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions: LLaVA's ``{"question_id", "image", "text", "category"?}``; the prompt is ``text`` plus LLaVA's
"Answer the question using a single word or phrase." (as ``scripts/v1_5/eval/pope.sh``; ``--no-single-word`` drops
it). Answers: ``{"question_id", "prompt", "text", "category"?}``.
"""
import argparse

from rgpt_llava import generation
from rgpt_llava.eval import generate_common as G

SINGLE_WORD = "Answer the question using a single word or phrase."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    ap.add_argument("--no-single-word", action="store_true")
    G.add_common_args(ap)
    ap.set_defaults(max_new_tokens=8)
    args = ap.parse_args(argv)
    G.check_run_args(args)
    qs = G.read_question_file(args.question_file)
    for q in qs:
        for f in ("image", "text"):
            if f not in q:
                G.fail(f"{q['_where']}: missing field '{f}'")
    qs = G.get_chunk(qs, args.num_chunks, args.chunk_idx)
    tokenizer, model, ip = G.load_model(args)
    with G.AnswerWriter(args.answers_file) as w:
        for name, group in G.by_image(qs, lambda q: q["image"], "POPE"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = G.load_image(args.image_folder, name, todo[0]["_where"])
            x = G.image_tensor(model, ip, img)
            texts = [q["text"] if args.no_single_word else q["text"] + "\n" + SINGLE_WORD for q in todo]
            prompts = [G.tokenize(tokenizer, G.conv_prompt([(t, None)], args.conv_mode)) for t in texts]
            outs = generation.generate_same_image(model, x, prompts, None, args.max_new_tokens, tokenizer.eos_token_id,
                                         args.batch_size)
            for q, t, o in zip(todo, texts, outs):
                rec = {"question_id": q["question_id"], "prompt": t, "text": G.decode(tokenizer, o)}
                if "category" in q:
                    rec["category"] = q["category"]
                w.write(rec)
        G.log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(G.run_main(main))
