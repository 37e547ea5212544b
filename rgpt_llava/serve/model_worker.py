"""LLaVA's model worker for RGPT checkpoints: LLaVA's controller protocol, with regions in every request.

    python -m llava.serve.controller --host 127.0.0.1 --port 21001
    python -m rgpt_llava.serve.model_worker --controller-address http://127.0.0.1:21001 \\
        --worker-address http://127.0.0.1:21002 --port 21002 --model-path CKPT [--model-base B] [--device cpu] \\
        [--load-4bit | --load-8bit] [--limit-model-concurrency 5] [--model-name NAME] [--max-regions 64] \
        [--engine vllm [--vllm-option tensor_parallel_size=2]]

It registers with LLaVA's unmodified controller, sends its heartbeats and answers ``/worker_generate_stream`` and
``/worker_get_status`` as LLaVA's worker does (``ModelWorker`` is subclassed: registration and heartbeats are
LLaVA's), so LLaVA's controller, its clients and several workers behind one controller work as they do for LLaVA.
The request's params add one key, ``"regions"``: one list of REGION (docs/SERVING.md) per image; ``<region>`` /
``<regionN>`` in the prompt. What differs from LLaVA's worker, and why:

* generation is :class:`rgpt_llava.serve.engine.RegionEngine` (regions, seed, the batched path), run lazily by the
  response: a client that disconnects stops the computation and frees its slot of ``--limit-model-concurrency``;
* a bad request is answered before any generation with HTTP 400 and LLaVA's chunk ``{"text": <what is wrong>,
  "error_code": 1}`` (LLaVA's worker sends HTTP 200 and "NETWORK ERROR DUE TO HIGH TRAFFIC" for every failure);
* chunks also carry ``finish_reason`` and ``usage`` (token counts), which LLaVA's clients ignore;
* the heartbeat thread is a daemon, so the worker stops on SIGTERM / Ctrl-C;
* ``--engine vllm`` generates with vLLM (its requests batched continuously; ``--limit-model-concurrency`` then
  defaults to 256); if vLLM's engine process dies, requests get LLaVA's error chunk (new ones with HTTP 503) and the
  worker exits with status 1 (the controller drops it; a supervisor restarts it).
"""
import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from typing import AsyncIterator, Iterator, Tuple

# LLaVA's worker module redirects stdout / stderr into its logger when imported (its log file is still written);
# keep this process's own streams.
_streams = sys.stdout, sys.stderr
import llava.serve.model_worker as llava_worker  # noqa: E402
sys.stdout, sys.stderr = _streams

from llava.constants import WORKER_HEART_BEAT_INTERVAL  # noqa: E402

from rgpt_llava.serve.backends import ENGINE_STOPPED  # noqa: E402
from rgpt_llava.serve.chat import ParamError, flag, number, stops  # noqa: E402
from rgpt_llava.serve.engine import Job, RegionEngine, Sampling, iterate_on, run_on  # noqa: E402
from rgpt_llava.serve.inputs import InputError, decode_image, parse_regions, split_alpha  # noqa: E402
from rgpt_llava.serve.options import (StartupError, add_engine_flags, add_model_flags, add_server_flags,  # noqa: E402
                                      check_at_least_one, check_listen_address, load_engine, served_name,
                                      serve_until_unhealthy)

MAX_NEW_TOKENS_CAP = 1024   # LLaVA's worker caps max_new_tokens at 1024 too


def _chunk(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\0"


def parse_params(engine: RegionEngine, params) -> Tuple[Job, str]:
    """LLaVA's worker params (plus ``regions``, ``seed``) -> a checked job and the prompt echoed in every chunk.
    The params are written by :func:`rgpt_llava.serve.backends.worker_params` (or any LLaVA client)."""
    if not isinstance(params, dict):
        raise InputError("the request body must be a JSON object (LLaVA's worker params)")
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InputError("a non-empty string is required", "prompt")
    images = params.get("images") or []
    regions = params.get("regions") or []
    if not isinstance(images, list):
        raise InputError("expected a list of base64 images", "images")
    if not isinstance(regions, list) or not all(isinstance(r, list) for r in regions):
        raise InputError("expected one list of REGION per image", "regions")
    if len(images) > 1:
        raise InputError(f"RGPT takes one image per conversation, got {len(images)}", "images")
    if len(regions) > max(len(images), 1) or (regions and regions[0] and not images):
        raise InputError(f"{sum(len(r) for r in regions)} region(s) for {len(images)} image(s): regions are parts "
                         f"of an image; send one list per image", "regions")
    image = None
    items = []
    if images:
        image, alpha = split_alpha(decode_image(images[0], "images[0]"), "images[0]")
        if alpha is not None:
            items.append((alpha, "images[0] (alpha channel)"))
    for k, region in enumerate(regions[0] if regions else []):
        items.append((region, f"regions[0][{k}]"))
    parsed = parse_regions(items, image.size, engine.max_regions, image=image, sam=engine.sam) if items else []
    return engine.prepare(image, [(prompt, parsed)], sampling_of(params), param="prompt"), prompt


def sampling_of(params: dict) -> Sampling:
    """The params' sampling, checked by the API's checks (:mod:`rgpt_llava.serve.chat`), refused in LLaVA's words."""
    try:
        return Sampling(temperature=float(number(params, "temperature", 1.0, 0.0, 100.0)),
                        top_p=float(number(params, "top_p", 1.0, 0.0, 1.0)),
                        max_new_tokens=min(int(number(params, "max_new_tokens", 256, 1, 1e9)), MAX_NEW_TOKENS_CAP),
                        stop=stops(params), seed=number(params, "seed", None, integer=True),
                        ignore_eos=flag(params, "ignore_eos"))
    except ParamError as e:
        raise InputError(e.expected_got(got=e.param != "stop"), e.param) from None


class LLaVAChunks:
    """LLaVA's chunks of one answer: the prompt and the answer so far, with RGPT's finish reason and token counts."""

    def __init__(self, job: Job, prompt: str):
        self.text, self.usage = prompt, {"prompt_tokens": job.prompt_tokens[0], "completion_tokens": 0}

    def __call__(self, delta) -> bytes:
        self.text += delta.text
        self.usage["completion_tokens"] = delta.completion_tokens
        return _chunk({"text": self.text, "error_code": 0, "finish_reason": delta.finish_reason, "usage": self.usage})


class RegionModelWorker(llava_worker.ModelWorker):
    """LLaVA's ``ModelWorker`` with RGPT's engine; registration, heartbeats and status are LLaVA's."""

    def __init__(self, controller_addr: str, worker_addr: str, engine: RegionEngine, model_name: str,
                 limit_model_concurrency: int, no_register: bool = False):
        # LLaVA's __init__ loads the model with LLaVA's builder; RGPT's engine is built by the caller instead.
        self.controller_addr, self.worker_addr = controller_addr, worker_addr
        self.worker_id = str(uuid.uuid4())[:6]
        self.model_name, self.engine, self.device = model_name, engine, str(engine.model.device)
        self.limit = limit_model_concurrency
        self.running = 0          # requests holding a slot
        self.waiting = 0          # requests queued for one
        self.registered = not no_register
        if self.registered:
            self.register_to_controller()
            threading.Thread(target=self._heart_beat, daemon=True).start()

    def _heart_beat(self):
        while True:
            time.sleep(WORKER_HEART_BEAT_INTERVAL)
            self.send_heart_beat()

    def get_queue_length(self) -> int:
        return self.running + self.waiting

    def healthy(self) -> bool:
        """False once vLLM's engine process has died (always True with the HF engine)."""
        return getattr(self.engine, "healthy", True)

    def stream(self, job: Job, prompt: str):
        """LLaVA's chunks: the prompt plus the answer so far, each time the answer grows (async with vLLM)."""
        if hasattr(self.engine, "agenerate"):
            return self._vllm_stream(job, prompt)
        return self._stream(job, prompt)

    def _stream(self, job: Job, prompt: str) -> Iterator[bytes]:
        chunk = LLaVAChunks(job, prompt)
        for deltas in self.engine.generate(job):
            yield chunk(deltas[0])

    async def _vllm_stream(self, job: Job, prompt: str) -> AsyncIterator[bytes]:
        from vllm.v1.engine.exceptions import EngineDeadError
        chunk = LLaVAChunks(job, prompt)
        try:
            async for deltas in self.engine.agenerate(job):
                yield chunk(deltas[0])
        except EngineDeadError as e:
            yield _chunk({"text": ENGINE_STOPPED.format(type(e).__name__), "error_code": 1})


def build_app(worker: RegionModelWorker):
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse
    from starlette.background import BackgroundTask

    app = FastAPI(title="rgpt_llava model worker")
    slots = {}

    def semaphore() -> asyncio.Semaphore:  # made inside the server's event loop
        if "s" not in slots:
            slots["s"] = asyncio.Semaphore(worker.limit)
        return slots["s"]

    def heart_beat_now():
        # LLaVA's worker reports its queue to the controller as each request starts and ends (the controller's
        # shortest-queue dispatch reads it); off the event loop, since LLaVA's heartbeat blocks until it gets through.
        if worker.registered:
            threading.Thread(target=worker.send_heart_beat, daemon=True).start()

    def error(message: str, status: int = 400) -> Response:
        return Response(_chunk({"text": message, "error_code": 1}), status_code=status,
                        media_type="application/json")

    @app.post("/worker_generate_stream")
    async def generate_stream(request: Request):
        try:
            params = await request.json()
        except ValueError:
            return error("the request body is not JSON")
        if not worker.healthy():
            return error(ENGINE_STOPPED.format("its process is gone"), status=503)
        try:
            job, prompt = await run_on(worker.engine.executor, parse_params, worker.engine, params)
        except InputError as e:
            return error(str(e))
        worker.waiting += 1
        try:
            await semaphore().acquire()
        finally:
            worker.waiting -= 1
        worker.running += 1
        heart_beat_now()
        released = []

        def release():
            if not released:   # once, whichever comes first: the stream's end or the response's background task
                released.append(True)
                worker.running -= 1
                semaphore().release()
                heart_beat_now()

        async def body():
            try:
                async for chunk in iterate_on(worker.engine.executor, worker.stream(job, prompt)):
                    yield chunk
            except Exception as e:  # a failure inside the model: the client gets LLaVA's error chunk, not a cut stream
                yield _chunk({"text": f"generation failed: {type(e).__name__}: {e}", "error_code": 1})
            finally:
                release()

        return StreamingResponse(body(), media_type="application/octet-stream", background=BackgroundTask(release))

    @app.post("/worker_get_status")
    async def get_status():
        return worker.get_status()

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder: accept points, scribbles and snapped boxes as regions")
    add_engine_flags(p)
    add_server_flags(p, port=21002)
    p.add_argument("--worker-address", default=None, help="the URL the controller reaches this worker at "
                                                           "(default http://HOST:PORT)")
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--limit-model-concurrency", type=int, default=None,
                   help="requests generating at once (default 5; 256 with --engine vllm)")
    p.add_argument("--no-register", action="store_true", help="serve without a controller")
    args = p.parse_args(argv)
    if args.limit_model_concurrency is None:
        args.limit_model_concurrency = 256 if args.engine == "vllm" else 5
    check_at_least_one(p, args, "limit_model_concurrency", "max_regions")
    try:
        check_listen_address(args.host, args.port)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # in one event loop from loading to serving: vLLM's async engine binds to the loop it is loaded in
    return asyncio.run(serve(args))


async def serve(args) -> int:
    name = served_name(args)
    try:
        engine = load_engine(args, asynchronous=True, max_regions=args.max_regions, name=name)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        worker_addr = args.worker_address or f"http://{args.host}:{args.port}"
        try:
            worker = RegionModelWorker(args.controller_address, worker_addr, engine, name,
                                       args.limit_model_concurrency, no_register=args.no_register)
        except Exception as e:  # requests' connection errors, LLaVA's assert on the status
            print(f"error: cannot register with the controller at {args.controller_address} ({type(e).__name__}: "
                  f"{e}); start it first (python -m llava.serve.controller) or pass --no-register", file=sys.stderr)
            return 2
        print(f"worker {name} at {worker_addr} (controller "
              f"{args.controller_address if not args.no_register else 'none'})", flush=True)
        # vLLM's engine processes (and the memory they reserve) stop with the server, a SIGTERM included
        return await serve_until_unhealthy(build_app(worker), args.host, args.port, worker.healthy,
                                           on_stop=getattr(engine, "close", None))
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    sys.exit(main())
