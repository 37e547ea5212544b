"""Generation step of region classification (GT boxes of a COCO-style instances file) -> answers for ``coco_cls``.

python -m rgpt_llava.eval.model_coco_cls --model-path P --annotation-file instances_val2017.json \
    --image-folder val2017 --answers-file cls.jsonl [--mode one_turn_each|multi_turn|one_turn_all] \
    [--vocab-name COCO-80] [--rank-scores] [--num-chunks N --chunk-idx K] [--batch-size B] [--device cpu]

Answer per (non-crowd) annotation: ``{"question_id": ann_id, "text", "image_id", "category_id"[, "scores"]}``.
"""
import argparse
import re

import torch

from rgpt_llava import generation
from rgpt_llava.data.instructions import category_suffix
from rgpt_llava.eval.common import read_json
from rgpt_llava.eval.generate_common import (AnswerWriter, add_common_args, answer, by_image, check_run_args,
                                             conv_prompt, fail, get_chunk, load_engine, load_image, log, prepare,
                                             question, run_main)
from rgpt_llava.mm_utils import tokenizer_region_token

QUESTION = "What category name best describes the region represented by {region}?"


def class_question(region: str, vocab: str) -> str:
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
    base = tokenizer_region_token(prompt, tokenizer)
    full = tokenizer_region_token(prompt + " " + name, tokenizer)
    if full[:len(base)] == base and len(full) > len(base):
        ids = full[len(base):]
    else:
        ids = tokenizer(name, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id]


def read_annotations(args):
    """``(images by id, [(category id, name)], annotations of this chunk)``; each annotation knows its place in the
    file (``_where``) for errors."""
    gt = read_json(args.annotation_file, "annotation file")
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        fail(f"annotation file {args.annotation_file}: expected a COCO-style object with images, annotations, "
             f"categories")
    images = {im["id"]: im for im in gt["images"]}
    cats = [(c["id"], c["name"]) for c in gt["categories"]]
    anns = []
    for i, a in enumerate(gt["annotations"]):
        if a.get("iscrowd", 0) and not args.include_crowd:
            continue
        where = f"annotation file {args.annotation_file}, annotations[{i}] (id {a.get('id')!r})"
        if a.get("image_id") not in images:
            fail(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        anns.append(dict(a, _where=where))
    anns.sort(key=lambda a: (str(a["image_id"]), str(a["id"])))
    return images, cats, get_chunk(anns, args.num_chunks, args.chunk_idx)


def each_region_job(args, engine, img, anns):
    """One prompt per region: "What category ... <region1>?" (one_turn_each, and the prompts --rank-scores ranks the
    class names after)."""
    prompt = conv_prompt([(class_question("<region1>", args.vocab_name), None)], args.conv_mode)
    return prepare(engine, img, [question(args, img, prompt, [a], a["_where"], engine.aspect) for a in anns],
                   args.max_new_tokens)


def multi_turn_answers(args, engine, img, anns):
    """One conversation about all regions, one turn per region, each answer history for the next question."""
    turns, texts = [], []
    for k in range(len(anns)):
        turns.append((class_question(f"<region{k + 1}>", args.vocab_name), None))
        # every region is passed at every turn (the model sees the same masks), the prompt names the first k + 1
        job = prepare(engine, img, [question(args, img, conv_prompt(turns, args.conv_mode), anns,
                                             anns[0]["_where"], engine.aspect)],
                      args.max_new_tokens, require_all_regions=False)
        texts.append(answer(engine, job, 1)[0])
        turns[-1] = (turns[-1][0], texts[-1])
    return texts


def all_at_once_answers(args, engine, img, anns):
    """One question naming every region; the answer is split into per-region names (:func:`parse_all`)."""
    prompt = conv_prompt([(all_question(len(anns), args.vocab_name), None)], args.conv_mode)
    job = prepare(engine, img, [question(args, img, prompt, anns, anns[0]["_where"], engine.aspect)],
                  args.max_new_tokens)
    return parse_all(answer(engine, job, 1)[0], len(anns))


def rank_scores(args, engine, job, name_ids):
    """``[regions, classes]`` normalised likelihoods of every class name as the answer to each region's prompt."""
    lp = torch.cat([generation.score_candidates(engine.model, job.image, job.prompts[i:i + args.batch_size],
                                                job.masks[i:i + args.batch_size], name_ids, args.rank_chunk)
                    for i in range(0, len(job.prompts), args.batch_size)])
    return torch.softmax(lp, dim=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotation-file", "--question-file", dest="annotation_file", required=True)
    ap.add_argument("--mode", choices=("one_turn_each", "multi_turn", "one_turn_all"), default="one_turn_each")
    ap.add_argument("--vocab-name", default="COCO-80", help="vocabulary named in the task-guided suffix")
    ap.add_argument("--rank-scores", action="store_true", help="add normalised likelihoods of every class name")
    ap.add_argument("--rank-chunk", type=int, default=64, help="class names scored together")
    ap.add_argument("--include-crowd", action="store_true")
    add_common_args(ap)
    args = ap.parse_args(argv)
    check_run_args(ap, args)
    images, cats, anns = read_annotations(args)
    engine = load_engine(args)
    name_ids = None
    with AnswerWriter(args.answers_file) as w:
        for image_id, group in by_image(anns, lambda a: a["image_id"], "classification"):
            todo = [a for a in group if not w.is_done(a["id"])]
            if not todo:
                continue
            if args.mode == "multi_turn":
                todo = group      # the conversation needs every earlier turn
            img = load_image(args.image_folder, images[image_id].get("file_name"),
                             f"{todo[0]['_where']}, image {image_id}")
            each = each_region_job(args, engine, img, todo) if args.mode == "one_turn_each" or args.rank_scores \
                else None
            if args.mode == "one_turn_each":
                texts = answer(engine, each, args.batch_size, args.naive)
            elif args.mode == "multi_turn":
                texts = multi_turn_answers(args, engine, img, todo)
            else:
                texts = all_at_once_answers(args, engine, img, todo)
            scores = None
            if args.rank_scores:
                if name_ids is None:
                    prompt = conv_prompt([(class_question("<region1>", args.vocab_name), None)], args.conv_mode)
                    name_ids = [answer_ids(engine.tokenizer, prompt, name) for _, name in cats]
                scores = rank_scores(args, engine, each, name_ids)
            for j, (a, t) in enumerate(zip(todo, texts)):
                rec = {"question_id": a["id"], "text": t, "image_id": a["image_id"],
                       "category_id": a["category_id"]}
                if scores is not None:
                    rec["scores"] = {str(cid): float(scores[j, c]) for c, (cid, _) in enumerate(cats)}
                w.write(rec)
        log(f"{w.num_written} answers written to {args.answers_file} ({len(anns)} regions in chunk "
            f"{args.chunk_idx}/{args.num_chunks})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
