"""Build region instruction data: ``python -m rgpt_llava.data.build SOURCE --out OUT.json [options]``.

Sources: ``coco``, ``lvis``, ``v3det`` (classification), ``vg`` (captions + relationships), ``refcocog`` (captions +
REC), ``recapd`` (detailed captions), ``llava`` (image-level data, copied through after a check). ``--merge A.json
B.json ... --out ALL.json [--seed S]`` concatenates built files and shuffles them with the seed. Every build is
deterministic for its ``--seed``. Prints a summary (samples, images, regions, turns, skipped items with reasons);
exit status 0 on success, 1 for bad input (the message names the file, item and problem), 2 for bad arguments.
``docs/DATA.md`` describes the format and each source.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from rgpt_llava.data import coco_style
from rgpt_llava.data.common import DataError, Stats, rng_for, summarize, write_json
from rgpt_llava.paths import parse_args_checked


def _common(p: argparse.ArgumentParser, prefix: bool = True) -> None:
    p.add_argument("--out", required=True, help="output JSON (a list of LLaVA / RGPT samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    if prefix:
        p.add_argument("--image-prefix", default="",
                       help="prepended to every image path, e.g. coco/train2017 (relative to LLaVA's --image_folder)")


def _boxes_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boxes-only", action="store_true",
                   help="write only the box of each region, not its segmentation (default: both; the model uses the "
                        "mask when there is one)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.data.build",
                                 description="Build region instruction data for RGPT training (docs/DATA.md).",
                                 epilog="Also: --merge A.json B.json ... --out ALL.json [--seed S]")
    sub = ap.add_subparsers(dest="source", required=True, metavar="SOURCE")

    for source in coco_style.SOURCES:
        p = sub.add_parser(source, help=f"{source} instances JSON -> classification conversations")
        p.add_argument("--input", required=True, help=f"{source} instances JSON (COCO-style)")
        _common(p)
        p.add_argument("--per-category", type=int, default=None,
                       help=f"annotations kept per category, 0 = all (default "
                            f"{coco_style.DEFAULT_PER_CATEGORY[source]}, the paper's; V3Det stage 2: 10)")
        p.add_argument("--vocab-name", default=coco_style.DEFAULT_VOCAB[source],
                       help="vocabulary named by the task-guided suffix 'Answer the question using {vocab} category "
                            "names.' (default %(default)s)")
        p.add_argument("--suffix", choices=coco_style.SUFFIX_MODES, default="first",
                       help="task-guided suffix on the first turn (default, as paper Table 13), every turn, or none")
        p.add_argument("--dialogue-mode", choices=coco_style.DIALOGUE_MODES, default="multi_turn",
                       help="paper Table 13: one region per turn (default), all regions in one turn, or one "
                            "conversation per region")
        p.add_argument("--max-regions", type=int, default=30,
                       help="regions per conversation; an image with more is split into several samples (0 = no "
                            "limit; default %(default)s)")
        p.add_argument("--keep-underscores", action="store_true",
                       help="answer with category names as written (default: underscores read as spaces)")
        _boxes_only(p)

    p = sub.add_parser("vg", help="Visual Genome region descriptions (+ relationships) -> caption conversations")
    p.add_argument("--regions", required=True, help="region_descriptions.json")
    p.add_argument("--relationships", help="relationships.json (adds relationship turns)")
    p.add_argument("--image-data", help="image_data.json (image paths VG_100K*/ID.jpg and sizes; without it: "
                                        "ID.jpg and no box check)")
    _common(p)
    p.add_argument("--max-regions", type=int, default=10, help="regions per image (default %(default)s, the paper's)")
    p.add_argument("--max-relations", type=int, default=2,
                   help="relationship turns per image, each naming 2 regions (default %(default)s)")

    p = sub.add_parser("refcocog", help="RefCOCOg refs + instances -> caption and REC conversations")
    p.add_argument("--refs", required=True, help="refs(umd).p")
    p.add_argument("--instances", required=True, help="instances.json of RefCOCOg")
    p.add_argument("--split", default="train", help="split of the refs to convert (default %(default)s)")
    _common(p)
    p.add_argument("--tasks", default="caption,rec", help="comma-separated: caption, rec (default %(default)s)")
    p.add_argument("--max-candidates", type=int, default=10,
                   help="candidate regions listed in REC turns, targets always kept (default %(default)s)")
    p.add_argument("--no-match-ratio", type=float, default=0.1,
                   help="probability that a REC turn lists the candidates without the target and is answered 'No "
                        "corresponding options found.' (default %(default)s)")
    _boxes_only(p)

    p = sub.add_parser("recapd", help="RecapD JSONL region captions -> detailed-description conversations")
    p.add_argument("--input", required=True, help="JSON Lines rows (docs/DATA.md)")
    _common(p)
    p.add_argument("--max-regions", type=int, default=5,
                   help="regions per conversation; more are split into several samples (0 = no limit; "
                        "default %(default)s)")
    p.add_argument("--min-clip-score", type=float, default=None, help="drop rows with a lower clip_score")
    _boxes_only(p)

    p = sub.add_parser("llava", help="LLaVA image-level JSON (LCS-558K, mix665k) -> copied through after a check")
    p.add_argument("--input", required=True, help="LLaVA conversation JSON")
    _common(p)

    p = sub.add_parser("merge", help="concatenate built files and shuffle them (also spelled --merge)")
    p.add_argument("inputs", nargs="+", help="built JSON files")
    _common(p, prefix=False)
    return ap


def run(args: argparse.Namespace) -> List[dict]:
    source = args.source
    stats = Stats(source)
    if source in coco_style.SOURCES:
        samples = coco_style.convert(args.input, source, image_prefix=args.image_prefix, seed=args.seed,
                                     per_category=args.per_category, vocab=args.vocab_name, suffix=args.suffix,
                                     dialogue_mode=args.dialogue_mode, max_regions=args.max_regions,
                                     boxes_only=args.boxes_only, keep_underscores=args.keep_underscores, stats=stats)
    elif source == "vg":
        from rgpt_llava.data import vg
        samples = vg.convert(args.regions, args.relationships, args.image_data, image_prefix=args.image_prefix,
                             seed=args.seed, max_regions=args.max_regions, max_relations=args.max_relations,
                             stats=stats)
    elif source == "refcocog":
        from rgpt_llava.data import refcocog
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        samples = refcocog.convert(args.refs, args.instances, split=args.split, image_prefix=args.image_prefix,
                                   seed=args.seed, tasks=tasks, max_candidates=args.max_candidates,
                                   no_match_ratio=args.no_match_ratio, boxes_only=args.boxes_only, stats=stats)
    elif source == "recapd":
        from rgpt_llava.data import recapd
        samples = recapd.convert(args.input, image_prefix=args.image_prefix, seed=args.seed,
                                 max_regions=args.max_regions, min_clip_score=args.min_clip_score,
                                 boxes_only=args.boxes_only, stats=stats)
    elif source == "llava":
        from rgpt_llava.data import llava_passthrough
        samples = llava_passthrough.convert(args.input, args.image_prefix, stats)
    else:  # merge: each file checked like LLaVA data, then concatenated and shuffled
        from rgpt_llava.data import llava_passthrough
        samples = []
        for path in args.inputs:
            samples.extend(llava_passthrough.convert(path, stats=stats))
        ids = [s.get("id") for s in samples if "id" in s]
        if len(set(map(str, ids))) < len(ids):
            stats.note("samples sharing an id with another sample", len(ids) - len(set(map(str, ids))))
        rng_for(args.seed, "merge").shuffle(samples)
    stats.flush_warnings()
    if not samples:
        raise DataError(f"{source}: no samples were produced (see the warnings above); nothing written to "
                        f"{args.out}")
    write_json(args.out, samples)
    print(summarize(stats, samples, args.out))
    return samples


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--merge":
        argv[0] = "merge"
    # --out may be none of the files the build reads (every other argument naming a file; the merge's positional)
    args = parse_args_checked(parser(), argv, ("out",))
    try:
        run(args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
