#!/usr/bin/env python
"""Describe everything, against one prompt per region: regions per second at 8, 32 and 128 regions, in one run.

    python scripts/bench/describe_speed.py [--regions 8 32 128] [--rounds 3] [--max-tokens 8] [--batch-size 32]
                                           [--model-path CKPT] [--device cpu] [--json out.json]

Both sides answer "Provide a brief caption for the area indicated by <region1>." about the same N boxes of one photo
through the serving engine, greedy, exactly ``--max-tokens`` tokens per answer (``ignore_eos``), so both generate the
same tokens (tests/test_sam_serving.py: the answers are equal):

  describe    ``rgpt_llava.serve.describe.describe``: the image encoded once per batch of ``--batch-size`` regions,
              the prompt's shared prefix run once, the answers decoded as one batch (what the CLI, the API's
              /v1/regions/describe and the page's button run);
  per region  N requests of one region each (``engine.prepare`` + ``engine.answer``), what a client of a one-region
              model has to do.

Rounds alternate the two sides; each time reported is the median over the rounds. A tiny random checkpoint with the
real LLaMA tokenizer is built unless ``--model-path`` is given. SAM's proposals are not timed (the same for both).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_checkpoint  # noqa: E402  (the same tiny checkpoint as the API benchmark)


def boxes(n: int, width: int, height: int):
    from rgpt_llava.geometry import parse_region
    return [parse_region({"box": [(k * 37) % (width - 80), (k * 53) % (height - 80),
                                  (k * 37) % (width - 80) + 80, (k * 53) % (height - 80) + 80]}, k, (width, height))
            for k in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="describe's regions per batch (the CLI's default)")
    ap.add_argument("--model-path", default=None, help="default: a tiny random checkpoint built here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if min(args.regions + [args.rounds, args.max_tokens, args.batch_size]) < 1:
        ap.error("--regions, --rounds, --max-tokens and --batch-size must be at least 1")
    import torch
    from PIL import Image
    from rgpt_llava.serve.describe import DEFAULT_PROMPT, describe, describe_prompt
    from rgpt_llava.serve.engine import RegionEngine, Sampling
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path or build_checkpoint(Path(tmp))
        engine = RegionEngine.load(model_path, device=args.device, max_regions=1)
        image = Image.open(ROOT / "tests" / "assets" / "images" / "coffee.jpg").convert("RGB")   # 600 x 400
        text = describe_prompt(DEFAULT_PROMPT, "vicuna_v1")
        sampling = Sampling(temperature=0.0, max_new_tokens=args.max_tokens, ignore_eos=True)

        def batched(regions):
            return describe(engine, image, regions, max_new_tokens=args.max_tokens, batch_size=args.batch_size,
                            progress=False, ignore_eos=True)

        def per_region(regions):
            return [engine.answer(engine.prepare(image, [(text, [r])], sampling))[0].strip() for r in regions]

        batched(boxes(2, *image.size)), per_region(boxes(2, *image.size))       # warm-up
        rows = []
        for n in args.regions:
            regions = boxes(n, *image.size)
            times = {"describe": [], "per_region": []}
            answers = {}
            for _ in range(args.rounds):
                for name, fn in (("describe", batched), ("per_region", per_region)):
                    t = time.perf_counter()
                    answers[name] = fn(regions)
                    times[name].append(time.perf_counter() - t)
            same = answers["describe"] == answers["per_region"]
            d, p = statistics.median(times["describe"]), statistics.median(times["per_region"])
            rows.append({"regions": n, "describe_s": d, "per_region_s": p, "describe_regions_per_s": n / d,
                         "per_region_regions_per_s": n / p, "ratio": p / d, "same_answers": same})
            print(f"{n:4d} regions: describe {n / d:7.1f} regions/s ({d:.2f} s), one prompt per region "
                  f"{n / p:7.1f} regions/s ({p:.2f} s): {p / d:.1f}x{'' if same else '  (answers differ!)'}",
                  flush=True)
    out = {"device": args.device, "torch_threads": torch.get_num_threads(), "max_tokens": args.max_tokens,
           "batch_size": args.batch_size, "rounds": args.rounds, "model": args.model_path or "tiny random",
           "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
