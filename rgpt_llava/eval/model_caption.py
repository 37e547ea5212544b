"""Generation step of region captioning (RefCOCOg / Visual Genome) -> answers for ``caption``.

python -m rgpt_llava.eval.model_caption --model-path P --question-file questions.jsonl --image-folder DIR \
    --answers-file cap.jsonl [--prompt "..."] [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Questions (JSONL): ``{"question_id", "image" (or "file_name"), "bbox": [x, y, w, h], "segmentation"?}``
(``python -m rgpt_llava.eval.caption build-refs --questions-out`` writes them for RefCOCOg). The region is the
segmentation when given, else the box. Answers: ``{"question_id", "text", "image"}``.
"""
import argparse

from rgpt_llava import generation
from rgpt_llava.eval import generate_common as G

DEFAULT_PROMPT = "Provide a brief caption for the area indicated by <region1>."   # Table 21, first prompt


def image_name(q):
    return q.get("image") or q.get("file_name")


def region_of(q):
    if "segmentation" in q and q["segmentation"]:
        return {"segmentation": q["segmentation"]}
    if "bbox" not in q:
        G.fail(f"{q['_where']}: missing field 'bbox' (or 'segmentation')")
    return {"bbox": q["bbox"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--question-file", required=True)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="question with <region1>")
    G.add_common_args(ap)
    args = ap.parse_args(argv)
    G.check_run_args(args)
    qs = G.get_chunk(G.read_question_file(args.question_file), args.num_chunks, args.chunk_idx)
    tokenizer, model, ip = G.load_model(args)
    prompt = G.conv_prompt([(args.prompt, None)], args.conv_mode)
    with G.AnswerWriter(args.answers_file) as w:
        for name, group in G.by_image(qs, image_name, "captions"):
            todo = [q for q in group if not w.is_done(q["question_id"])]
            if not todo:
                continue
            img = G.load_image(args.image_folder, name, todo[0]["_where"])
            x = G.image_tensor(model, ip, img)
            inputs = [G.region_inputs(args, tokenizer, model, ip, prompt,
                                      [{"bbox": q["bbox"]} if args.regions_as_text and "bbox" in q else region_of(q)],
                                      img, q["_where"]) for q in todo]
            outs = generation.generate_same_image(model, x, [ids for ids, _ in inputs], [m for _, m in inputs],
                                         args.max_new_tokens,
                                         tokenizer.eos_token_id, args.batch_size)
            for q, o in zip(todo, outs):
                w.write({"question_id": q["question_id"], "text": G.decode(tokenizer, o), "image": name})
        G.log(f"{w.num_written} answers written to {args.answers_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(G.run_main(main))
