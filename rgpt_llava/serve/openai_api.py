"""An OpenAI-compatible chat-completions API for RGPT, with regions as content parts beside the image.

    python -m rgpt_llava.serve.openai_api --model-path CKPT [--model-base B] [--device cpu] [--host H --port 8000]
    python -m rgpt_llava.serve.openai_api --model-path CKPT --engine vllm [--vllm-option tensor_parallel_size=2]
    python -m rgpt_llava.serve.openai_api --controller-address http://127.0.0.1:21001    # forward to model workers

``GET /v1/models``; ``POST /v1/chat/completions`` (stream or not; ``temperature``, ``top_p``, ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``seed``, ``n``; ``usage``). A user message's content parts::

    {"type": "text", "text": "What is <region1> holding next to <region2>?"}
    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}
    {"type": "region", "region": {"box": [x1, y1, x2, y2]}}        # or polygon / rle / mask: docs/SERVING.md

Regions are numbered in order of appearance within the request, across all messages, so every earlier turn's
regions stay addressable. A message whose text names no region places its region parts where they stand among its
text parts (``"What is", region, "doing?"`` reads ``What is <region1> doing?``). An RGBA image whose alpha channel is
not opaque carries one mask region, numbered where the image stands. One image per conversation (RGPT takes one).
RGPT's extension: ``"per_region": true`` asks the question once per region of the request -- choice ``i`` answers
about region ``i + 1`` -- decoded as one batch on one image encoding (describe everything in one request).

With ``--sam-model PATH``, regions may also be prompts that SAM turns into masks (``{"points": ...}``,
``{"scribble": ...}``, ``{"box": ..., "snap": true}``). ``POST /v1/regions/describe`` answers one prompt per region of
one image -- the regions given, or SAM's automatic proposals -- with each region's mask (COCO RLE), box and text.

Errors are OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status. ``GET /health``:
200 while the server can answer; 503 once it cannot (vLLM's engine process has died), when requests get 503 too and
the server exits with status 1 so that a supervisor restarts it.

``--engine vllm`` generates with vLLM (continuous batching across requests; docs/VLLM.md): the same requests, checks
and answers; ``--limit-concurrency`` then defaults to 256 (vLLM batches what is in flight).
"""
import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from rgpt_llava.serve.backends import Backend, Usage, backend_from_args, collect
from rgpt_llava.serve.chat import APIError, ChatRequest, bad_request, parse_chat_request, parse_describe_request
from rgpt_llava.serve.engine import iterate_on, run_on
from rgpt_llava.serve.inputs import MAX_REGIONS
from rgpt_llava.serve.options import (StartupError, add_conv_mode_flag, add_engine_flags, add_model_flags,
                                      add_server_flags, check_at_least_one, check_listen_address,
                                      resolve_conv_mode_flag, serve_until_unhealthy)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def read_json(request: Request) -> object:
    """The request's JSON body; a body that is not JSON is the client's 400."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON ({e})") from None


class Routes:
    """The API's endpoints on one backend: requests are checked (:mod:`rgpt_llava.serve.chat`) and answered by the
    backend (:mod:`rgpt_llava.serve.backends`); at most ``limit_concurrency`` generate at once, the others wait."""

    def __init__(self, backend: Backend, max_regions: int = MAX_REGIONS, limit_concurrency: int = 5):
        self.backend, self.max_regions, self.limit_concurrency = backend, max_regions, limit_concurrency
        self.executor = getattr(backend, "executor", None)   # the model's own thread; None: network calls, any thread
        self._gate: Optional[asyncio.Semaphore] = None

    def gate(self) -> asyncio.Semaphore:
        if self._gate is None:   # made inside the server's event loop
            self._gate = asyncio.Semaphore(self.limit_concurrency)
        return self._gate

    async def model_name(self, req: ChatRequest) -> str:
        return req.model or (await run_on(None, self.backend.models))[0]

    async def unexpected(self, request, exc):
        """Never a traceback to the client."""
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    async def models(self):
        """``GET /v1/models``."""
        try:
            names = await run_on(None, self.backend.models)
        except APIError as e:
            return error_response(e)
        now = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "rgpt_llava"}
                                           for n in names]}

    async def chat_completions(self, request: Request):
        """``POST /v1/chat/completions``: a checked request, then its answer whole or as server-sent events."""
        try:
            req = await run_on(None, parse_chat_request, await read_json(request), self.max_regions)
            events, usage = await run_on(self.executor, self.backend.start, req)
        except APIError as e:
            return error_response(e)
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        model = await self.model_name(req)
        count = req.region_count() if req.per_region else req.n
        head = {"id": cid, "created": created, "model": model, "system_fingerprint": None}
        if req.stream:
            return StreamingResponse(self.completion_events(head, events, usage, count, req.include_usage),
                                     media_type="text/event-stream")
        try:
            async with self.gate():
                texts, reasons = await collect(self.executor, events, count)
        except APIError as e:
            return error_response(e)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                             "logprobs": None, "finish_reason": reasons[i]} for i in range(count)],
                "usage": usage.body()}

    async def completion_events(self, head: dict, events, usage: Usage, count: int, include_usage: bool):
        """The streamed answer: OpenAI's chunks, ``data: [DONE]`` last."""
        def chunk(choices: list, **extra) -> bytes:
            obj = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(obj)}\n\n".encode()

        async with self.gate():
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(count)])
            async for evs in iterate_on(self.executor, events):
                out = []
                for ev in evs:
                    if ev.error:   # after the 200 went out: OpenAI's error object as the last event
                        yield f"data: {json.dumps(ev.api_error().body())}\n\n".encode()
                        return
                    out.append({"index": ev.index, "delta": {"content": ev.text} if ev.text else {},
                                "logprobs": None, "finish_reason": ev.finish_reason})
                if out:
                    yield chunk(out)
            if include_usage:
                yield chunk([], usage=usage.body())
            yield b"data: [DONE]\n\n"

    async def health(self):
        """``GET /health``: 200 while this server can answer, 503 (OpenAI's error shape) once it cannot."""
        if self.backend.healthy():
            return {"status": "ok"}
        return error_response(APIError(503, "the engine has stopped; this server is exiting",
                                       type_="service_unavailable"))

    async def describe_regions(self, request: Request):
        """``POST /v1/regions/describe``: one answer per region of one image (given, or proposed by SAM)."""
        from rgpt_llava.serve.describe import region_records
        try:
            body = await read_json(request)
            req, regions = await run_on(self.executor, parse_describe_request, body, self.backend.sam,
                                        self.max_regions)
            texts, usage = [""] * len(regions), Usage()
            if regions:
                events, usage = await run_on(self.executor, self.backend.start, req)
                async with self.gate():
                    texts, _ = await collect(self.executor, events, len(regions))
        except APIError as e:
            return error_response(e)
        width, height = req.image.size
        return {"object": "region.descriptions", "model": await self.model_name(req),
                "width": width, "height": height, "prompt": req.messages[0].parts[-1].text,
                "regions": region_records(regions, [t.strip() for t in texts], width, height), "usage": usage.body()}


def build_app(backend: Backend, max_regions: int = MAX_REGIONS, limit_concurrency: int = 5):
    """The FastAPI app: :class:`Routes` on ``backend``."""
    from fastapi import FastAPI

    app = FastAPI(title="rgpt_llava OpenAI-compatible API")
    routes = Routes(backend, max_regions, limit_concurrency)
    app.add_exception_handler(Exception, routes.unexpected)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/v1/regions/describe", routes.describe_regions, methods=["POST"])
    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder: points, scribbles and snapped boxes as regions; region proposals",
                    controller="--controller-address",
                    controller_help="forward to the model workers behind LLaVA's controller")
    add_engine_flags(p)
    add_server_flags(p, port=8000)
    add_conv_mode_flag(p)
    p.add_argument("--limit-concurrency", type=int, default=None,
                   help="requests generating at once; others queue (default 5; 256 with --engine vllm)")
    args = p.parse_args(argv)
    resolve_conv_mode_flag(args)
    if args.limit_concurrency is None:
        args.limit_concurrency = 256 if args.engine == "vllm" else 5
    check_at_least_one(p, args, "max_regions", "limit_concurrency")
    if args.engine == "vllm" and args.controller_address:
        p.error("--engine vllm generates in this process: give --model-path (the workers behind a controller take "
                "their own --engine)")
    try:
        check_listen_address(args.host, args.port)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # in one event loop from loading to serving: vLLM's async engine binds to the loop it is loaded in
    return asyncio.run(serve(args))


async def serve(args) -> int:
    try:
        backend = backend_from_args(args, args.controller_address)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"OpenAI-compatible API at http://{args.host}:{args.port}/v1", flush=True)
    # vLLM's engine processes stop with the server (a SIGTERM included)
    close = getattr(getattr(backend, "engine", None), "close", None)
    try:
        return await serve_until_unhealthy(build_app(backend, args.max_regions, args.limit_concurrency), args.host,
                                           args.port, backend.healthy, on_stop=close)
    finally:
        if close is not None:
            close()


if __name__ == "__main__":
    sys.exit(main())
