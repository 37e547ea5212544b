"""Generation step of referring expression comprehension among candidates -> answers for ``rec``.

python -m rgpt_llava.eval.model_rec --model-path P --question-file refcocog_val_rec.jsonl --image-folder train2014 \
    --answers-file rec.jsonl [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions: written by ``python -m rgpt_llava.eval.rec build`` (``candidates[i]`` is shown as ``<region{i+1}>``).
Answers: ``{"question_id", "text": "Region [x]", "candidates", "gt_bbox"}`` (self-contained for the scorer).
"""
import argparse

from rgpt_llava.data.instructions import rec_suffix, region_list, region_placeholder
from rgpt_llava import generation
from rgpt_llava.eval import generate_common as G


def rec_question(n: int, expression: str) -> str:
    regs = region_list([region_placeholder(i + 1) for i in range(n)])
    return f'From the provided masks denoted by {regs}, which one fits "{expression}"? {rec_suffix()}'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    G.add_common_args(ap)
    args = ap.parse_args(argv)
    G.check_run_args(args)
    qs = G.read_question_file(args.question_file)
    for q in qs:
        for f in ("candidates", "expression"):
            if f not in q:
                G.fail(f"{q['_where']}: missing field '{f}' (write questions with `python -m rgpt_llava.eval.rec "
                       f"build`)")
        if not q["candidates"]:
            G.fail(f"{q['_where']}: no candidates")
    qs = G.get_chunk(qs, args.num_chunks, args.chunk_idx)
    tokenizer, model, ip = G.load_model(args)
    with G.AnswerWriter(args.answers_file) as w:
        for name, group in G.by_image(qs, lambda q: q.get("file_name") or q.get("image"), "REC"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = G.load_image(args.image_folder, name, todo[0]["_where"])
            x = G.image_tensor(model, ip, img)
            inputs = [G.region_inputs(args, tokenizer, model, ip,
                                      G.conv_prompt([(rec_question(len(q["candidates"]), q["expression"]), None)],
                                                    args.conv_mode),
                                      [{"bbox": c} for c in q["candidates"]], img, q["_where"]) for q in todo]
            prompts = [ids for ids, _ in inputs]
            masks = [m for _, m in inputs]
            outs = generation.generate_same_image(model, x, prompts, masks, args.max_new_tokens, tokenizer.eos_token_id,
                                         args.batch_size)
            for q, o in zip(todo, outs):
                rec = {"question_id": q["question_id"], "text": G.decode(tokenizer, o),
                       "candidates": q["candidates"]}
                if "gt_bbox" in q:
                    rec["gt_bbox"] = q["gt_bbox"]
                w.write(rec)
        G.log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(G.run_main(main))
