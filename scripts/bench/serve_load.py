#!/usr/bin/env python
"""Load on the OpenAI-compatible API: concurrent clients x regions per request, against the same questions asked
one region per request (the way a client of a one-mask server has to ask), measured in one run.

    python scripts/bench/serve_load.py [--clients 1 4 16] [--regions 1 8 32] [--rounds 2] [--max-tokens 8]
                                       [--model-path CKPT] [--device cpu] [--json out.json]

The server (``python -m rgpt_llava.serve.openai_api``) runs in its own process on a loopback port, on a tiny random
checkpoint unless ``--model-path`` is given. Each request asks "Describe <region> briefly." about R regions of one
photo with ``per_region`` (one answer per region, decoded as one batch on one image encoding); the baseline asks the
same R questions as R one-region requests. Greedy decoding of exactly ``--max-tokens`` tokens per answer
(``ignore_eos``), so both sides generate the same tokens (a region's answer is the same either way,
tests/test_serve_api.py). Reported: requests/s,
regions/s, p50 / p95 latency per request, and for one client the ratio (time of R one-region requests) / (time of one
R-region request).
"""
import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_checkpoint(tmp: Path) -> str:
    from rgpt_llava.convert import convert
    from rgpt_llava.tiny import build_tiny_clip, build_tiny_llava
    from rgpt_llava.assets import llama_tokenizer_dir
    clip = build_tiny_clip(tmp / "clip")
    llava = build_tiny_llava(tmp / "llava", str(llama_tokenizer_dir()), clip)
    return convert(llava, str(tmp / "rgpt"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path: str, device: str, port: int, max_regions: int, log: Path):
    import requests
    proc = subprocess.Popen([sys.executable, "-m", "rgpt_llava.serve.openai_api", "--model-path", model_path,
                             "--model-name", "bench", "--device", device, "--host", "127.0.0.1", "--port", str(port),
                             "--max-regions", str(max_regions), "--limit-concurrency", "64"],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def photo_url() -> str:
    from PIL import Image
    image = Image.open(ROOT / "tests" / "assets" / "images" / "coffee.jpg").convert("RGB")   # 600 x 400
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def boxes(n: int):
    out = []
    for k in range(n):
        x, y = (k * 37) % 500, (k * 53) % 300
        out.append({"box": [x, y, x + 80, y + 80]})
    return out


def body(url: str, regions, max_tokens: int, per_region: bool) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}},
               {"type": "text", "text": "Describe <region> briefly."}]
    content += [{"type": "region", "region": r} for r in regions]
    return {"model": "bench", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens, "per_region": per_region, "ignore_eos": True}


def run_clients(base: str, clients: int, jobs_per_client, rounds: int):
    """Each client thread posts its jobs in order, ``rounds`` times; returns per-request latencies and wall time."""
    import requests
    latencies, errors = [], []
    lock = threading.Lock()

    def client():
        s = requests.Session()
        for _ in range(rounds):
            for payload in jobs_per_client:
                t = time.perf_counter()
                r = s.post(base + "/v1/chat/completions", json=payload, timeout=600)
                dt = time.perf_counter() - t
                with lock:
                    (latencies if r.status_code == 200 else errors).append(dt if r.status_code == 200 else r.text)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:300]}")
    return latencies, wall


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=2, help="times each client sends its requests")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model-path", default=None, help="default: a tiny random checkpoint built here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if min(args.clients + args.regions + [args.rounds, args.max_tokens]) < 1:
        ap.error("--clients, --regions, --rounds and --max-tokens must be at least 1")
    import requests
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path or build_checkpoint(Path(tmp))
        port = free_port()
        server = start_server(model, args.device, port, max(args.regions), Path(tmp) / "server.log")
        base = f"http://127.0.0.1:{port}"
        try:
            url = photo_url()
            requests.post(base + "/v1/chat/completions", json=body(url, boxes(1), args.max_tokens, True))  # warm-up
            rows = []
            for c in args.clients:
                for r in args.regions:
                    regs = boxes(r)
                    lat, wall = run_clients(base, c, [body(url, regs, args.max_tokens, True)], args.rounds)
                    one = [body(url, [x], args.max_tokens, False) for x in regs]
                    lat1, wall1 = run_clients(base, c, one, args.rounds)
                    n_req = c * args.rounds
                    rows.append({"clients": c, "regions": r,
                                 "batched": {"req_s": n_req / wall, "regions_s": n_req * r / wall,
                                             "p50_s": pct(lat, .5), "p95_s": pct(lat, .95)},
                                 "one_per_request": {"req_s": len(lat1) / wall1, "regions_s": len(lat1) / wall1,
                                                     "p50_s": pct(lat1, .5), "p95_s": pct(lat1, .95)},
                                 "speedup_regions_s": (n_req * r / wall) / (len(lat1) / wall1)})
                    print(f"clients {c:3d}  regions {r:3d}  |  one {r}-region request: {n_req / wall:6.2f} req/s, "
                          f"{n_req * r / wall:7.1f} regions/s, p50 {pct(lat, .5):6.3f} s, p95 {pct(lat, .95):6.3f} s"
                          f"  |  {r} one-region requests: {len(lat1) / wall1:7.1f} regions/s, p50 "
                          f"{pct(lat1, .5):6.3f} s  |  x{rows[-1]['speedup_regions_s']:.1f}", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    import torch
    single = [r for r in rows if r["clients"] == 1]
    for r in single:
        print(f"one client, {r['regions']} regions: {r['regions']} one-region requests take "
              f"{r['speedup_regions_s']:.1f}x as long as one {r['regions']}-region request"
              + ("  (target >= 10x)" if r["regions"] == 32 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": {"device": args.device, "torch": torch.__version__,
                                                       "threads": torch.get_num_threads(),
                                                       "max_tokens": args.max_tokens, "rounds": args.rounds,
                                                       "model": args.model_path or "tiny random (LLaMA tokenizer)"},
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
