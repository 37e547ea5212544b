"""Generation step of region classification (GT boxes of a COCO-style instances file) -> answers for ``coco_cls``.

python -m rgpt_llava.eval.model_coco_cls --model-path P --annotation-file instances_val2017.json \
    --image-folder val2017 --answers-file cls.jsonl [--mode one_turn_each|multi_turn|one_turn_all] \
    [--vocab-name COCO-80] [--rank-scores] [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Answer per (non-crowd) annotation: ``{"question_id": ann_id, "text", "image_id", "category_id"[, "scores"]}``.
"""
import argparse
import re

import torch

from rgpt_llava.data.instructions import category_suffix
from rgpt_llava import generation
from rgpt_llava.eval import generate_common as G

QUESTION = "What category name best describes the region represented by {region}?"


def question(region: str, vocab: str) -> str:
    return QUESTION.format(region=region) + " " + category_suffix(vocab)


def all_question(n: int, vocab: str) -> str:
    from rgpt_llava.data.instructions import region_list
    regs = region_list([f"<region{i + 1}>" for i in range(n)])
    return (f"What category name best describes each of the regions represented by {regs}? "
            f"{category_suffix(vocab)} Answer in the form Region [1]: name; Region [2]: name; ...")


def parse_all(text: str, n: int):
    """Per-region names from a one_turn_all answer: ``Region [k]: name`` items, else items in order."""
    found = {}
    for m in re.finditer(r"region\s*\[?(\d+)\]?\s*[:\-]\s*([^;\n,]+)", text, re.I):
        found.setdefault(int(m.group(1)), m.group(2).strip())
    if not found:
        parts = [p.strip() for p in re.split(r"[;\n,]", text) if p.strip()]
        found = {i + 1: p for i, p in enumerate(parts)}
    return [found.get(i + 1, "") for i in range(n)]


def answer_ids(tokenizer, prompt: str, name: str):
    """Token ids of ``name`` as the complete assistant answer after ``prompt`` (then EOS)."""
    base = G.tokenize(tokenizer, prompt)
    full = G.tokenize(tokenizer, prompt + " " + name)
    if full[:len(base)] == base and len(full) > len(base):
        ids = full[len(base):]
    else:
        ids = tokenizer(name, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotation-file", "--question-file", dest="annotation_file", required=True)
    ap.add_argument("--mode", choices=("one_turn_each", "multi_turn", "one_turn_all"), default="one_turn_each")
    ap.add_argument("--vocab-name", default="COCO-80", help="vocabulary named in the task-guided suffix")
    ap.add_argument("--rank-scores", action="store_true", help="add normalised likelihoods of every class name")
    ap.add_argument("--rank-chunk", type=int, default=64, help="class names scored together")
    ap.add_argument("--include-crowd", action="store_true")
    G.add_common_args(ap)
    args = ap.parse_args(argv)
    G.check_run_args(args)
    gt = G.read_json_file(args.annotation_file, "annotation file")
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        G.fail(f"annotation file {args.annotation_file}: expected a COCO-style object with images, annotations, "
               f"categories")
    images = {im["id"]: im for im in gt["images"]}
    cats = [(c["id"], c["name"]) for c in gt["categories"]]
    anns = []
    for i, a in enumerate(gt["annotations"]):
        if a.get("iscrowd", 0) and not args.include_crowd:
            continue
        where = f"annotation file {args.annotation_file}, annotations[{i}] (id {a.get('id')!r})"
        if a.get("image_id") not in images:
            G.fail(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        anns.append(dict(a, _where=where))
    anns.sort(key=lambda a: (str(a["image_id"]), str(a["id"])))
    anns = G.get_chunk(anns, args.num_chunks, args.chunk_idx)
    tokenizer, model, ip = G.load_model(args)
    eos = tokenizer.eos_token_id
    name_ids = None
    with G.AnswerWriter(args.answers_file) as w:
        for image_id, group in G.by_image(anns, lambda a: a["image_id"], "classification"):
            todo = [a for a in group if not w.is_done(a["id"])]
            if not todo:
                continue
            if args.mode == "multi_turn":
                todo = group      # the conversation needs every earlier turn
            img = G.load_image(args.image_folder, images[image_id].get("file_name"),
                               f"{todo[0]['_where']}, image {image_id}")
            x = G.image_tensor(model, ip, img)
            q1 = question("<region1>", args.vocab_name)
            texts = []
            if args.mode == "one_turn_each":
                inputs = [G.region_inputs(args, tokenizer, model, ip, G.conv_prompt([(q1, None)], args.conv_mode),
                                          [a], img, a["_where"]) for a in todo]
                prompts = [ids for ids, _ in inputs]
                masks = [m for _, m in inputs]
                if args.naive:
                    outs = []
                    for i in range(0, len(todo), args.batch_size):
                        outs += generation.generate_naive(model, tokenizer, [x] * len(prompts[i:i + args.batch_size]),
                                                 prompts[i:i + args.batch_size], masks[i:i + args.batch_size],
                                                 args.max_new_tokens)
                else:
                    outs = generation.generate_same_image(model, x, prompts, masks, args.max_new_tokens, eos, args.batch_size)
                texts = [G.decode(tokenizer, o) for o in outs]
            else:
                if args.mode == "multi_turn":
                    where = todo[0]["_where"]
                    masks_all = None if args.regions_as_text else G.region_masks(todo, img, ip, model, where)
                    turns = []
                    for k in range(len(todo)):
                        turns.append((question(f"<region{k + 1}>", args.vocab_name), None))
                        ids = G.tokenize(tokenizer, G.region_prompt(args, model, G.conv_prompt(turns, args.conv_mode),
                                                                    todo, img, where))
                        out = generation.generate_same_image(model, x, [ids], [masks_all], args.max_new_tokens, eos)[0]
                        texts.append(G.decode(tokenizer, out))
                        turns[-1] = (turns[-1][0], texts[-1])
                else:
                    ids, masks_all = G.region_inputs(
                        args, tokenizer, model, ip,
                        G.conv_prompt([(all_question(len(todo), args.vocab_name), None)], args.conv_mode), todo,
                        img, todo[0]["_where"])
                    out = generation.generate_same_image(model, x, [ids], [masks_all], args.max_new_tokens, eos)[0]
                    raw = G.decode(tokenizer, out)
                    texts = parse_all(raw, len(todo))
            scores = None
            if args.rank_scores:
                prompt = G.conv_prompt([(q1, None)], args.conv_mode)
                if name_ids is None:
                    name_ids = [answer_ids(tokenizer, prompt, name) for _, name in cats]
                inputs = [G.region_inputs(args, tokenizer, model, ip, prompt, [a], img, a["_where"]) for a in todo]
                pids = [ids for ids, _ in inputs]
                rmasks = [m for _, m in inputs]
                lp = torch.cat([generation.score_candidates(model, x, pids[i:i + args.batch_size],
                                                   rmasks[i:i + args.batch_size], name_ids, args.rank_chunk)
                                for i in range(0, len(todo), args.batch_size)])
                scores = torch.softmax(lp, dim=1)
            for j, (a, t) in enumerate(zip(todo, texts)):
                rec = {"question_id": a["id"], "text": t, "image_id": a["image_id"],
                       "category_id": a["category_id"]}
                if scores is not None:
                    rec["scores"] = {str(cid): float(scores[j, c]) for c, (cid, _) in enumerate(cats)}
                w.write(rec)
        G.log(f"{w.num_written} answers written to {args.answers_file} ({len(anns)} regions in chunk "
              f"{args.chunk_idx}/{args.num_chunks})")
    return 0


if __name__ == "__main__":
    raise SystemExit(G.run_main(main))
