#!/usr/bin/env python
"""Load on the OpenAI-compatible API: concurrent clients x regions per request, against the same questions asked
one region per request (the way a client of a one-mask server has to ask), measured in one run.

    python scripts/bench/serve_load.py [--clients 1 4 16] [--regions 1 8 32] [--rounds 2] [--max-tokens 8]
                                       [--model-path CKPT] [--device cpu] [--json out.json]
    python scripts/bench/serve_load.py --engines hf vllm [--clients 64] [--max-regions 8] [--max-tokens 32]
                                       [--batch 500] [--hidden 256 --layers 4 | --model-path CKPT] [--json out.json]

``--engines hf vllm`` (the vllm stack: ``.venv-vllm/bin/python``): the same API with ``--engine hf`` and then with
``--engine vllm`` (each with its default ``--limit-concurrency``) on one checkpoint: ``--clients`` concurrent clients,
each posting one request about 1..``--max-regions`` boxes of the photo (one question naming them all, greedy, exactly
``--max-tokens`` tokens); requests/s, p50 / p95 latency, the ratio, and whether the answers are equal. Without
``--model-path`` the checkpoint is random: LLaMA's tokenizer, a narrow CLIP tower with LLaVA-1.5's geometry
(``--image-size 336``: 576 image tokens, a 96 x 96 refined map), a Llama of ``--hidden`` x ``--layers`` (heads of 64,
a size vLLM's CPU attention has kernels for). Then (``--batch N``, 0 to skip) the batch
command (``python -m rgpt_llava.serve.batch --engine E``) over N such requests in a JSONL: its time from the model
loaded to the last answer, requests/s, the ratio, and whether the two answer files are equal.

Without ``--engines``:
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


def start_server(model_path: str, device: str, port: int, max_regions: int, log: Path, *extra: str):
    import requests
    extra = extra or ("--limit-concurrency", "64")
    proc = subprocess.Popen([sys.executable, "-m", "rgpt_llava.serve.openai_api", "--model-path", model_path,
                             "--model-name", "bench", "--device", device, "--host", "127.0.0.1", "--port", str(port),
                             "--max-regions", str(max_regions), *extra],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")))
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


def run_threads(threads) -> float:
    """Start the client threads together, wait for all: the wall time."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def random_boxes(rng, count: int):
    """``count`` random boxes of at least 20 x 20 pixels inside the 600 x 400 photo."""
    out = []
    for _ in range(count):
        x, y = rng.randrange(0, 560), rng.randrange(0, 360)
        out.append({"box": [x, y, rng.randrange(x + 20, 600), rng.randrange(y + 20, 400)]})
    return out


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
    wall = run_threads([threading.Thread(target=client) for _ in range(clients)])
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:300]}")
    return latencies, wall


def stop_server(server) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def engine_bodies(url: str, clients: int, max_regions: int, max_tokens: int):
    """Request k: one question naming 1 + k % max_regions boxes (seeded), greedy, exactly ``max_tokens`` tokens."""
    import random
    rng = random.Random(0)
    out = []
    for k in range(clients):
        count = 1 + k % max_regions
        regions = random_boxes(rng, count)
        text = "Describe " + ", ".join(f"<region{i + 1}>" for i in range(count)) + "."
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
        content += [{"type": "region", "region": r} for r in regions]
        out.append({"model": "bench", "messages": [{"role": "user", "content": content}], "temperature": 0,
                    "max_tokens": max_tokens, "ignore_eos": True})
    return out


def concurrent_once(base: str, bodies):
    """Every body posted at once by its own client; (answers, latencies, wall seconds)."""
    import requests
    answers, latencies = [None] * len(bodies), [0.0] * len(bodies)

    def client(i):
        t = time.perf_counter()
        r = requests.post(base + "/v1/chat/completions", json=bodies[i], timeout=900)
        latencies[i] = time.perf_counter() - t
        answers[i] = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else f"HTTP {r.text}"
    wall = run_threads([threading.Thread(target=client, args=(i,)) for i in range(len(bodies))])
    failed = [a for a in answers if a.startswith("HTTP ")]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0][:300]}")
    return answers, latencies, wall


def compare_batch(args, model: str, tmp: Path) -> dict:
    """``python -m rgpt_llava.serve.batch`` on each engine over the same ``--batch`` requests."""
    import re
    import shutil
    import random
    shutil.copy(ROOT / "tests" / "assets" / "images" / "coffee.jpg", tmp / "coffee.jpg")
    rng = random.Random(1)
    with open(tmp / "requests.jsonl", "w") as f:
        for k in range(args.batch):
            count = 1 + k % args.max_regions
            regions = random_boxes(rng, count)
            f.write(json.dumps({"id": k, "image": "coffee.jpg", "regions": regions, "prompt": "Describe "
                                + ", ".join(f"<region{i + 1}>" for i in range(count)) + "."}) + "\n")
    out = {}
    for engine in args.engines:
        answers = tmp / f"answers-{engine}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "rgpt_llava.serve.batch", "--model-path", model, "--engine",
                               engine, "--device", args.device, "--requests", str(tmp / "requests.jsonl"),
                               "--output", str(answers), "--max-new-tokens", str(args.max_tokens)],
                              cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE",
                                                                                         "1")))
        pace = re.search(r"in ([0-9.]+) s after loading", proc.stderr)
        if proc.returncode or not pace:
            raise SystemExit(f"the batch command failed on --engine {engine}: {proc.stderr[-2000:]}")
        seconds = float(pace.group(1))
        out[engine] = {"seconds": seconds, "req_s": round(args.batch / seconds, 2),
                       "answers": answers.read_text()}
        print(f"batch --engine {engine:5s}: {args.batch} requests in {seconds:7.1f} s after loading  "
              f"{args.batch / seconds:6.2f} req/s", flush=True)
    result = {e: {k: v for k, v in r.items() if k != "answers"} for e, r in out.items()}
    if "hf" in out and "vllm" in out:
        result["ratio"] = round(out["hf"]["seconds"] / out["vllm"]["seconds"], 2)
        result["equal_answer_files"] = out["hf"]["answers"] == out["vllm"]["answers"]
        print(f"vLLM/HF, batch of {args.batch}: {result['ratio']:.2f}x; answer files equal: "
              f"{result['equal_answer_files']}", flush=True)
    return result


def compare_engines(args) -> int:
    """The API on the HF engine vs on vLLM, same checkpoint, same concurrent requests, one run."""
    import requests
    from rgpt_llava.vllm.bench import build_checkpoint as build_vllm_checkpoint
    load_before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path or build_vllm_checkpoint(Path(tmp), args.hidden, args.layers, args.image_size)
        url = photo_url()
        bodies = engine_bodies(url, args.clients[0], args.max_regions, args.max_tokens)
        for engine in args.engines:
            port = free_port()
            server = start_server(model, args.device, port, args.max_regions, Path(tmp) / f"{engine}.log",
                                  "--engine", engine)
            base = f"http://127.0.0.1:{port}"
            try:
                requests.post(base + "/v1/chat/completions", json=bodies[-1], timeout=900)   # warm-up
                answers, lat, wall = concurrent_once(base, bodies)
            finally:
                stop_server(server)
            rows[engine] = {"req_s": len(bodies) / wall, "wall_s": wall, "p50_s": pct(lat, .5),
                            "p95_s": pct(lat, .95), "answers": answers}
            print(f"--engine {engine:5s}: {len(bodies)} concurrent requests in {wall:6.2f} s  "
                  f"{len(bodies) / wall:6.2f} req/s  p50 {pct(lat, .5):6.2f} s  p95 {pct(lat, .95):6.2f} s",
                  flush=True)
        batch = compare_batch(args, model, Path(tmp)) if args.batch else {}
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    result = {"batch": batch, "clients": args.clients[0], "max_regions": args.max_regions, "max_tokens": args.max_tokens,
              "hidden": args.hidden, "layers": args.layers, "image_size": args.image_size, "model_path": args.model_path,
              "cores": os.cpu_count(),
              "load_average_before_after": load,
              "engines": {e: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "answers"}
                          for e, r in rows.items()}}
    if "hf" in rows and "vllm" in rows:
        same = sum(a == b for a, b in zip(rows["hf"]["answers"], rows["vllm"]["answers"]))
        ratio = rows["vllm"]["req_s"] / rows["hf"]["req_s"]
        result.update(ratio=round(ratio, 2), equal_answers=f"{same}/{len(bodies)}")
        print(f"vLLM/HF through the API: {ratio:.2f}x requests/s (target >= 5x); answers equal {same}/{len(bodies)}; "
              f"{os.cpu_count()} cores, 1-minute load average {load[0]} before, {load[1]} after")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


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
    ap.add_argument("--engines", nargs="+", choices=("hf", "vllm"), default=None,
                    help="compare the API on these engines instead (the vllm stack)")
    ap.add_argument("--max-regions", type=int, default=8, help="--engines: regions per request, 1..this")
    ap.add_argument("--batch", type=int, default=500, help="--engines: requests of the batch command's run (0: none)")
    ap.add_argument("--hidden", type=int, default=256, help="--engines: the random checkpoint's LLM width")
    ap.add_argument("--layers", type=int, default=4, help="--engines: the random checkpoint's LLM depth")
    ap.add_argument("--image-size", type=int, default=336,
                    help="--engines: the random tower's input side (336: LLaVA-1.5's 576 image tokens)")
    args = ap.parse_args(argv)
    if args.engines:
        if "--clients" not in (argv if argv is not None else sys.argv):
            args.clients = [64]
        if "--max-tokens" not in (argv if argv is not None else sys.argv):
            args.max_tokens = 32
        if len(args.clients) != 1 or min(args.clients[0], args.max_regions, args.max_tokens) < 1:
            ap.error("--engines: one --clients count; --clients, --max-regions, --max-tokens at least 1")
        if not args.model_path and args.hidden % 64:
            ap.error("--hidden must be a multiple of 64 (heads of 64)")
        return compare_engines(args)
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
            stop_server(server)
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
