"""Who answers a chat request: the model in this process (:class:`LocalBackend`), the model in this process with vLLM
generating (:class:`VLLMBackend`, ``--engine vllm``) or the model workers behind LLaVA's controller
(:class:`ControllerBackend`). The OpenAI-compatible API and the web page ask through a :class:`Backend`, so they check
and answer alike whichever one serves.

A new backend implements :class:`Backend`: ``models``, ``healthy``, ``start`` (check the request against the model
and return its event stream -- blocking or async -- and usage, raising :class:`~rgpt_llava.serve.chat.APIError`
before any output for a bad request), and the ``executor`` / ``sam`` attributes; :func:`backend_from_args` is where a
flag picks it.

Regions reach a backend as the request's parts (:class:`~rgpt_llava.serve.chat.Part`: REGION JSON, a decoded mask,
or a parsed :class:`~rgpt_llava.regions.region.Region`). The local backend parses them for the engine
(:func:`rgpt_llava.serve.inputs.parse_regions`); the controller's wire is LLaVA's worker params, written by
:func:`worker_params` with each region by :func:`worker_region` and read back by the worker's
:func:`rgpt_llava.serve.model_worker.parse_params`.
"""
import base64
import io
import json
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from rgpt_llava.regions.rasterize import full_mask
from rgpt_llava.regions.region import Region
from rgpt_llava.sam import needs_sam
from rgpt_llava.serve.chat import (APIError, ChatRequest, bad_request, conversation_prompt, refused_input,
                                   turns_and_regions)
from rgpt_llava.serve.engine import Job, RegionEngine, Sampling, iterate_on
from rgpt_llava.serve.inputs import InputError, parse_regions


@dataclass
class Event:
    index: int
    text: str
    finish_reason: Optional[str]
    error: Optional[str] = None    # a failure reported by a worker after the stream began
    status: int = 502              # its HTTP status: 502 a worker failed; 503 the engine has stopped

    def api_error(self) -> APIError:
        return APIError(self.status, self.error, type_="service_unavailable" if self.status == 503 else "server_error")


# What ``Backend.start`` returns as events: a blocking iterator (run on the backend's ``executor``) or an async one.
Events = Union[Iterator[List[Event]], AsyncIterator[List[Event]]]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: Dict[int, int] = field(default_factory=dict)

    def record(self, deltas) -> List["Event"]:
        """The engine's :class:`~rgpt_llava.serve.engine.Delta` s of one step as events, their token counts kept."""
        for d in deltas:
            self.completion_tokens[d.index] = d.completion_tokens
        return [Event(d.index, d.text, d.finish_reason) for d in deltas]

    def body(self) -> dict:
        c = sum(self.completion_tokens.values())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c}


class Backend(Protocol):
    """What the API and the page need of whoever answers.

    ``executor``: the thread every blocking call of ``start`` and of its event stream must run on (the engine's one
    model thread), or None where they may run on any thread (network calls). ``sam``: a
    :class:`rgpt_llava.sam.SamPrompter` that resolves clicks, scribbles and snapped boxes here, or None."""
    executor: Optional[Executor]
    sam: Any

    def models(self) -> List[str]:
        """The model names served; :class:`APIError` 503 when they cannot be asked."""

    def healthy(self) -> bool:
        """False once this backend can answer nothing more (vLLM's engine process has died): the server's health
        endpoint then fails, and the server exits for its supervisor to restart it."""

    def start(self, req: ChatRequest) -> Tuple[Events, Usage]:
        """Check ``req`` against the model -- an :class:`APIError` here, before any output, for a bad request -- and
        return the events (after each step, the choices' new text) and the usage, filled in as the events are
        consumed. Stopping the iteration stops the generation."""


async def collect(executor: Optional[Executor], events: Events, count: int
                  ) -> Tuple[List[str], List[Optional[str]]]:
    """Every choice's whole text and finish reason; a failure reported mid-stream is an :class:`APIError` (502, or
    503 when the engine has stopped)."""
    texts, reasons = [""] * count, [None] * count
    async for evs in iterate_on(executor, events):
        for ev in evs:
            if ev.error:
                raise ev.api_error()
            texts[ev.index] += ev.text
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
    return texts, reasons


class LocalBackend:
    """The model in this process: every choice of a request prepared as one :class:`RegionEngine` job."""

    def __init__(self, engine: RegionEngine, conv_mode: str):
        self.engine, self.conv_mode = engine, conv_mode
        self.executor = engine.executor
        self.sam = engine.sam

    def models(self) -> List[str]:
        return [self.engine.name]

    def healthy(self) -> bool:
        return True

    def prepare(self, req: ChatRequest) -> Tuple[Job, Usage]:
        """The request checked against the model and prepared as one engine job (every choice), and its usage."""
        if req.model is not None and req.model != self.engine.name:
            raise APIError(404, f"the model {req.model!r} does not exist here; served: {self.engine.name}", "model",
                           code="model_not_found")
        mode = req.conv_mode or self.conv_mode
        image_size = req.image.size if req.image is not None else None
        items = []
        try:
            for keep in req.choices():
                turns, regions = turns_and_regions(req, keep)
                prompt = conversation_prompt(turns, req.system, mode)
                items.append((prompt, parse_regions(regions, image_size, self.engine.max_regions, image=req.image,
                                                    sam=self.sam) if regions else []))
            job = self.engine.prepare(req.image, items, req.sampling, param="messages")
        except InputError as e:
            raise refused_input(e) from None
        return job, Usage(prompt_tokens=sum(job.prompt_tokens) if req.per_region else job.prompt_tokens[0])

    def start(self, req: ChatRequest) -> Tuple[Events, Usage]:
        job, usage = self.prepare(req)

        def events():
            for deltas in self.engine.generate(job, stream=req.stream):
                yield usage.record(deltas)
        return events(), usage


ENGINE_STOPPED = ("the vLLM engine has stopped ({}); this server is exiting so that its supervisor restarts it: "
                  "retry shortly")


class VLLMBackend(LocalBackend):
    """The model in this process with vLLM generating (``--engine vllm``:
    :class:`rgpt_llava.vllm.engine.AsyncVLLMRegionEngine`). Requests are checked and prepared exactly as
    :class:`LocalBackend` does (the same 4xx), on a pool of ``prepare_threads`` threads (image and masks: CPU work
    beside vLLM's engine process, off the event loop), and then generated concurrently: vLLM batches every request
    in flight. When vLLM's engine process dies, requests in flight and new ones end with a 503 and
    :meth:`healthy` turns False."""

    def __init__(self, engine: RegionEngine, conv_mode: str, prepare_threads: int = 2):
        super().__init__(engine, conv_mode)
        self.executor = ThreadPoolExecutor(max_workers=prepare_threads, thread_name_prefix="rgpt-prepare")

    def healthy(self) -> bool:
        return self.engine.healthy

    def start(self, req: ChatRequest) -> Tuple[Events, Usage]:
        if not self.healthy():
            raise APIError(503, ENGINE_STOPPED.format("its process is gone"), type_="service_unavailable")
        job, usage = self.prepare(req)
        return self.events(job, usage), usage

    async def events(self, job: Job, usage: Usage) -> AsyncIterator[List[Event]]:
        """vLLM's stream as events; its engine's death as one 503 event (the 200 of a stream may be out already)."""
        from vllm.v1.engine.exceptions import EngineDeadError
        try:
            async for deltas in self.engine.agenerate(job):
                yield usage.record(deltas)
        except EngineDeadError as e:
            yield [Event(0, "", None, error=ENGINE_STOPPED.format(type(e).__name__), status=503)]


# ---------------------------------------------------------------------------------------------------------------------
# the controller's wire: LLaVA's worker params
# ---------------------------------------------------------------------------------------------------------------------
def png_base64(image) -> str:
    """A PIL image as base64 PNG (lossless: a mask stays the mask)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def worker_region(spec: Any) -> Any:
    """A region as the worker reads it (REGION JSON): REGION JSON as the client gave it (a prompt for SAM included,
    for the worker's ``--sam-model``), a decoded mask (an alpha channel) or a parsed :class:`Region` (a mask SAM made,
    the page's regions) as a PNG mask data URL."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, Region):
        from PIL import Image
        spec = Image.fromarray(full_mask(spec, *spec.image_size).astype("uint8") * 255)
    return {"mask": "data:image/png;base64," + png_base64(spec)}


def worker_params(model: str, prompt: str, image_b64: Optional[str], regions: Sequence[Any], sampling: Sampling,
                  seed: Optional[int]) -> dict:
    """LLaVA's worker params for one choice, with RGPT's ``regions`` (one list per image) and ``seed``."""
    return {"model": model, "prompt": prompt, "images": [image_b64] if image_b64 else [],
            "regions": [[worker_region(spec) for spec in regions]] if image_b64 else [],
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens, "stop": list(sampling.stop) or None, "seed": seed,
            "ignore_eos": sampling.ignore_eos}


class ControllerBackend:
    """Forwards to the model workers behind LLaVA's controller (``rgpt_llava.serve.model_worker``), one worker
    request per choice; a worker that is gone is dropped by ``/refresh_all_workers`` and the request retried."""

    def __init__(self, controller: str, conv_mode: str, timeout: float = 600.0, sam=None):
        self.controller, self.conv_mode, self.timeout = controller.rstrip("/"), conv_mode, timeout
        self.sam = sam     # prompts for SAM are resolved here when given; otherwise the worker's --sam-model does it
        self.executor = None

    def _post(self, path: str, payload: Optional[dict] = None) -> dict:
        import requests
        try:
            r = requests.post(self.controller + path, json=payload, timeout=10)
            r.raise_for_status()
            return r.json() if r.content else {}
        except requests.RequestException as e:
            raise APIError(503, f"the controller at {self.controller} does not answer ({type(e).__name__})",
                           type_="service_unavailable") from None

    def models(self) -> List[str]:
        return sorted(self._post("/list_models").get("models", []))

    def healthy(self) -> bool:
        return True     # the controller and its workers fail per request (503), and are restarted on their own

    def _worker(self, model: str, refresh: bool = False) -> str:
        if refresh:
            self._post("/refresh_all_workers")
        address = self._post("/get_worker_address", {"model": model}).get("address", "")
        if not address:
            raise APIError(404, f"no worker serves the model {model!r}; served: {', '.join(self.models()) or 'none'}",
                           "model", code="model_not_found")
        return address

    def resolve(self, spec: Any, param: str, image) -> Any:
        """``spec`` with a prompt for SAM replaced by the :class:`Region` of the mask this backend's SAM makes of it
        (other regions unchanged: the worker parses them)."""
        if not isinstance(spec, dict) or not needs_sam(spec):
            return spec
        try:
            return parse_regions([(spec, param)], image.size, image=image, sam=self.sam)[0]
        except InputError as e:
            raise refused_input(e) from None

    def start(self, req: ChatRequest) -> Tuple[Events, Usage]:
        models = self.models()
        model = req.model or (models[0] if len(models) == 1 else None)
        if model is None:
            raise bad_request(f"name the model: the controller serves {', '.join(models) or 'none'}", "model")
        image_b64 = png_base64(req.image) if req.image is not None else None
        mode = req.conv_mode or self.conv_mode
        calls = []
        for keep in req.choices():
            turns, regions = turns_and_regions(req, keep)
            specs = [self.resolve(spec, param, req.image) if self.sam is not None else spec for spec, param in regions]
            seed = None if req.sampling.seed is None else req.sampling.seed + len(calls)
            calls.append(worker_params(model, conversation_prompt(turns, req.system, mode), image_b64, specs,
                                       req.sampling, seed))
        responses = [self._open(model, payload) for payload in calls]   # before any output: a bad request is a 4xx
        return self._events(responses, req.per_region)

    def _open(self, model: str, payload: dict):
        import requests
        for attempt in range(2):
            address = self._worker(model, refresh=attempt > 0)
            try:
                r = requests.post(address + "/worker_generate_stream", json=payload, stream=True,
                                  timeout=self.timeout)
                break
            except requests.RequestException:
                if attempt:
                    raise APIError(503, f"the worker at {address} does not answer",
                                   type_="service_unavailable") from None
        if r.status_code >= 400:
            raise APIError(r.status_code if r.status_code < 500 else 502, _worker_error(r), "messages")
        return r, len(payload["prompt"])

    @staticmethod
    def _events(responses, per_region: bool) -> Tuple[Iterator[List[Event]], Usage]:
        """LLaVA's chunks (the prompt and the answer so far, ``\\0``-separated) as events."""
        usage = Usage()

        def events():
            for index, (r, prompt_len) in enumerate(responses):
                emitted = 0   # characters of the answer already in an event
                for raw in r.iter_lines(delimiter=b"\0"):
                    if not raw:
                        continue
                    chunk = json.loads(raw)
                    if chunk.get("error_code"):
                        yield [Event(index, "", None, error=str(chunk.get("text")))]
                        return
                    answer = chunk["text"][prompt_len:]
                    counts = chunk.get("usage") or {}
                    usage.completion_tokens[index] = counts.get("completion_tokens", 0)
                    if chunk.get("finish_reason") and (index == 0 or per_region):
                        usage.prompt_tokens += counts.get("prompt_tokens", 0)   # n copies of one prompt count once
                    yield [Event(index, answer[emitted:], chunk.get("finish_reason"))]
                    emitted = len(answer)
        return events(), usage


def _worker_error(r) -> str:
    try:
        return json.loads(r.content.rstrip(b"\0")).get("text", r.text)
    except ValueError:
        return r.text


def backend_from_args(args, controller: Optional[str]) -> Backend:
    """The backend a server's flags ask for (the API and the web page; flags of
    :func:`rgpt_llava.serve.options.add_model_flags`): ``--model-path`` loads the model (and ``--sam-model``) in this
    process -- generating with vLLM under ``--engine vllm`` (then call this inside the server's event loop);
    otherwise the model workers behind LLaVA's ``controller``, with SAM, when given, loaded here to turn clicks,
    scribbles and snapped boxes into masks before a request is forwarded. Errors are
    :class:`rgpt_llava.serve.options.StartupError`."""
    from rgpt_llava.serve.options import load_engine, load_sam, served_name
    if args.model_path and getattr(args, "engine", "hf") == "vllm":
        return VLLMBackend(load_engine(args, asynchronous=True, max_regions=args.max_regions, name=served_name(args)),
                           args.conv_mode)
    if args.model_path:
        return LocalBackend(load_engine(args, max_regions=args.max_regions, name=served_name(args)), args.conv_mode)
    return ControllerBackend(controller, args.conv_mode, sam=load_sam(args))
