"""Throughput of region requests: the HF engine (one request at a time, as a worker serves them) against vLLM (all
requests handed over at once, continuously batched), in one run on the same checkpoint and requests.

    python -m rgpt_llava.vllm.bench [--requests 64] [--max-regions 8] [--new-tokens 32] [--path multimodal|embeds]
                                    [--model-path CKPT] [--hidden 256] [--layers 4] [--json out.json]

Without ``--model-path`` a random checkpoint is built (LLaMA's tokenizer, a narrow CLIP tower with LLaVA-1.5's 576
image tokens at ``--image-size 336``, a Llama of ``--hidden`` x ``--layers``; heads of 64). Request k asks about 1..``--max-regions`` regions of one photo (greedy,
exactly ``--new-tokens`` tokens per answer: ``ignore_eos``, so both engines do the same work); the answers are checked
equal. Prints requests/s and generated tokens/s of each engine and their ratio. Engine-level: no HTTP (the API's
load test is scripts/bench/serve_load.py).
"""
import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

PHOTO = Path(__file__).resolve().parents[2] / "tests" / "assets" / "images" / "coffee.jpg"


def build_checkpoint(out: Path, hidden: int, layers: int, image_size: int = 336) -> str:
    """A random RGPT checkpoint: LLaMA's tokenizer, a narrow CLIP tower at ``image_size`` (336: LLaVA-1.5's 24 x 24 =
    576 image tokens and RGPT's 96 x 96 refined map), a Llama of ``hidden`` x ``layers`` (heads of 64)."""
    from rgpt_llava.assets import llama_tokenizer_dir
    from rgpt_llava.convert import convert
    from rgpt_llava.tiny import build_tiny_clip, build_tiny_llava
    clip = build_tiny_clip(out / "clip", image_size=image_size)
    # heads of 64: a head size vLLM's CPU attention has kernels for
    llava = build_tiny_llava(out / "llava", str(llama_tokenizer_dir()), clip, hidden_size=hidden, num_layers=layers,
                             num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)
    return convert(llava, str(out / "rgpt"), refiner="deconv")


def requests_for(image, n: int, max_regions: int, seed: int = 0):
    """``n`` requests of 1..max_regions random boxes each, one question naming them all."""
    from rgpt_llava.geometry import parse_region
    rng = random.Random(seed)
    w, h = image.size
    out = []
    for k in range(n):
        count = 1 + k % max_regions
        boxes = []
        for i in range(count):
            x, y = rng.randrange(0, w - 40), rng.randrange(0, h - 40)
            boxes.append(parse_region(f"box:{x},{y},{rng.randrange(x + 20, w)},{rng.randrange(y + 20, h)}", i,
                                      image.size))
        names = ", ".join(f"<region{i + 1}>" for i in range(count))
        out.append([(f"A chat. USER: <image>\nDescribe {names}. ASSISTANT:", boxes)])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-regions", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--path", choices=("multimodal", "embeds"), default="multimodal")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=336,
                        help="the random tower's input side (336: LLaVA-1.5's 576 image tokens; 56: 16 tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the HF engine (default: cores)")
    parser.add_argument("--json", default=None, help="write the numbers here too")
    args = parser.parse_args(argv)
    if args.hidden % 64:
        parser.error("--hidden must be a multiple of 64 (heads of 64)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from PIL import Image

    from rgpt_llava.serve.engine import RegionEngine, Sampling
    from rgpt_llava.vllm.engine import VLLMRegionEngine

    torch.set_num_threads(args.threads or max(1, min(os.cpu_count() or 1, 16)))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or build_checkpoint(Path(tmp), args.hidden, args.layers, args.image_size)
        image = Image.open(PHOTO).convert("RGB")
        requests = requests_for(image, args.requests, args.max_regions)
        sampling = Sampling(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
        tokens = args.requests * args.new_tokens

        hf = RegionEngine.load(path, device="cpu")
        hf.answer(hf.prepare(image, requests[0], sampling))                    # warm-up
        start = time.perf_counter()
        hf_answers = [hf.answer(hf.prepare(image, items, sampling)) for items in requests]
        hf_s = time.perf_counter() - start
        del hf

        served = VLLMRegionEngine.load(path, path=args.path)
        served.answer_many([served.prepare(image, requests[0], sampling)])     # warm-up
        start = time.perf_counter()
        vllm_answers = served.answer_many([served.prepare(image, items, sampling) for items in requests])
        vllm_s = time.perf_counter() - start
        served.close()

    same = sum(a == b for a, b in zip(hf_answers, vllm_answers))
    # other processes on the machine slow the two phases unequally: the load average says whether they were there
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    result = {"requests": args.requests, "max_regions": args.max_regions, "new_tokens": args.new_tokens,
              "path": args.path, "hidden": args.hidden, "layers": args.layers, "image_size": args.image_size, "model_path": args.model_path,
              "hf_s": round(hf_s, 3), "vllm_s": round(vllm_s, 3),
              "hf_tokens_per_s": round(tokens / hf_s, 1), "vllm_tokens_per_s": round(tokens / vllm_s, 1),
              "ratio": round(hf_s / vllm_s, 2), "equal_answers": f"{same}/{args.requests}",
              "cores": os.cpu_count(), "load_average_before_after": load}
    print(f"{args.requests} requests x 1-{args.max_regions} regions x {args.new_tokens} tokens "
          f"(vLLM path: {args.path}; answers equal: {same}/{args.requests})")
    print(f"  HF engine, one request at a time: {hf_s:7.2f} s  {tokens / hf_s:8.1f} tokens/s")
    print(f"  vLLM, all requests at once:       {vllm_s:7.2f} s  {tokens / vllm_s:8.1f} tokens/s")
    print(f"  vLLM/HF: {hf_s / vllm_s:.2f}x  ({os.cpu_count()} cores; 1-minute load average {load[0]} before, "
          f"{load[1]} after)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":   # vLLM spawns its engine process: the guard keeps it from running this again
    main()
