"""Regions/s of the FAST evaluation path (image encoded once, shared-prefix KV cache, batched greedy decoding;
``rgpt_llava.generation.generate_same_image``) vs the naive loop (``model.generate`` per region, image
re-encoded each time), on a random tiny checkpoint, with a check that both give the SAME greedy answers.

    python scripts/bench/eval_throughput.py [--regions 32] [--max-new-tokens 16] [--batch-size 32] [--big] [--device cpu]

``--big`` builds a bigger random model (hidden 512, 8 layers, CLIP 224/14 with 256 patches) instead of the tiny one.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def build(tmp, big):
    from rgpt_llava.convert import convert
    from rgpt_llava.tiny import build_tiny_clip, build_tiny_llava, train_tiny_tokenizer
    tok = train_tiny_tokenizer(Path(tmp) / "tok")
    if big:
        clip = build_tiny_clip(Path(tmp) / "clip", image_size=224, hidden_size=128, num_layers=4)
        llava = build_tiny_llava(Path(tmp) / "llava", tok, clip, hidden_size=512, num_layers=8)
    else:
        clip = build_tiny_clip(Path(tmp) / "clip")
        llava = build_tiny_llava(Path(tmp) / "llava", tok, clip)
    return convert(llava, str(Path(tmp) / "rgpt"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--image", default=str(ROOT / "tests" / "assets" / "images" / "rocket.jpg"))
    ap.add_argument("--model-path", help="use this checkpoint instead of building a random one")
    args = ap.parse_args()
    torch.manual_seed(0)
    from PIL import Image
    from rgpt_llava import generation
    from rgpt_llava.eval.generate_common import conv_prompt, load_engine, prepare, question
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or build(tmp, args.big)
        engine = load_engine(argparse.Namespace(model_path=path, model_base=None, load_8bit=False, load_4bit=False,
                                                device=args.device))
        tok, model = engine.tokenizer, engine.model
        if not os.path.isfile(args.image):
            sys.exit(f"error: --image {args.image}: no such file")
        img = Image.open(args.image).convert("RGB")
        w, h = img.size
        prompt = conv_prompt([(
            "What category name best describes the region represented by <region1>? "
            "Answer the question using COCO-80 category names.", None)])
        boxes = [[(i * 37) % (w // 2), (i * 53) % (h // 2), w // 4 + i % 7 * 5, h // 4 + i % 5 * 7]
                 for i in range(args.regions)]
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

        def asked(box_list):
            """The prompt about each box, prepared as the generation steps prepare it (image encoded once)."""
            return prepare(engine, img, [question(argparse.Namespace(), img, prompt, [{"bbox": b}], "bench")
                                         for b in box_list], args.max_new_tokens)

        def fast():
            job = asked(boxes)
            return generation.generate_same_image(model, job.image, job.prompts, job.masks, args.max_new_tokens,
                                                  tok.eos_token_id, args.batch_size)

        def naive():
            out = []
            for b in boxes:
                job = asked([b])
                out += generation.generate_naive(model, tok, [job.image], job.prompts, job.masks,
                                                 args.max_new_tokens)
            return out

        fast()  # warm-up
        sync(); t = time.perf_counter(); f = fast(); sync(); tf = time.perf_counter() - t
        sync(); t = time.perf_counter(); n = naive(); sync(); tn = time.perf_counter() - t
        agree = sum(a == b for a, b in zip(f, n))
        ntok = sum(len(a) for a in n)
        print(f"device {args.device}, model {'big' if args.big else 'tiny'} random, {args.regions} regions, "
              f"max_new_tokens {args.max_new_tokens} ({ntok} tokens generated), batch {args.batch_size}")
        print(f"naive: {args.regions / tn:8.1f} regions/s ({tn:.2f} s)")
        print(f"fast : {args.regions / tf:8.1f} regions/s ({tf:.2f} s)")
        print(f"ratio: {tn / tf:.1f}x (target >= 5x)")
        print(f"greedy answers identical: {agree}/{args.regions}")
        return 0 if agree == args.regions else 1


if __name__ == "__main__":
    raise SystemExit(main())
