"""An OpenAI-compatible chat-completions API for RGPT, with regions as content parts beside the image.

    python -m rgpt_llava.serve.openai_api --model-path CKPT [--model-base B] [--device cpu] [--host H --port 8000]
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

Errors are OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.
"""
import argparse
import asyncio
import base64
import io
import json
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from rgpt_llava.prompt import build_prompt, check_conv_mode, with_image
from rgpt_llava.constants import REGION_PLACEHOLDER_PATTERN
from rgpt_llava.geometry import Region
from rgpt_llava.serve.engine import RegionEngine, Sampling, iterate_on, model_name_of, run_on
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError, decode_image, parse_regions, split_alpha
from rgpt_llava.sam import needs_sam

_PLACEHOLDER = re.compile(REGION_PLACEHOLDER_PATTERN)
MAX_N = 16
MAX_TOKENS_CAP = 4096
ROLES = ("system", "developer", "user", "assistant")
# Accepted and honoured (or harmless); anything else is refused by name.
KNOWN = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n",
         "stream", "stream_options", "user", "per_region", "conv_mode", "ignore_eos", "metadata", "store"}
# OpenAI parameters RGPT does not implement: accepted only at their no-op value.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": None, "logit_bias": None,
           "tools": None, "tool_choice": None, "parallel_tool_calls": None, "response_format": None,
           "functions": None, "function_call": None, "modalities": None, "audio": None, "prediction": None,
           "reasoning_effort": None, "service_tier": None, "web_search_options": None}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error",
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------------------------
# the request
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Part:
    kind: str                      # text | region | image
    text: str = ""
    region: Any = None             # REGION JSON, or a decoded mask image (an image's alpha channel)
    image: Any = None              # the decoded image of an image part
    param: str = ""


@dataclass
class Message:
    role: str
    parts: List[Part]
    param: str

    def names_regions(self) -> bool:
        return any(_PLACEHOLDER.search(p.text) for p in self.parts if p.kind == "text")


@dataclass
class ChatRequest:
    model: Optional[str]
    system: Optional[str]
    messages: List[Message]
    image: Any                      # PIL image or None
    sampling: Sampling
    n: int = 1
    per_region: bool = False
    stream: bool = False
    include_usage: bool = False
    conv_mode: Optional[str] = None
    region_params: List[str] = field(default_factory=list)

    def region_count(self) -> int:
        return sum(1 for m in self.messages for p in m.parts if p.kind == "region")


def _bad(message: str, param: Optional[str] = None) -> APIError:
    return APIError(400, message, param)


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise _bad(f"{key} must be {kind} in [{lo:g}, {hi:g}], got {value!r}", key)
    return value


def parse_chat_request(body: Any, max_regions: int = MAX_REGIONS) -> ChatRequest:
    """Checks everything but what needs the model (tokens, region geometry); errors are :class:`APIError` 400."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in KNOWN and k not in NEUTRAL)
    if unknown:
        raise _bad(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])
    for key, neutral in NEUTRAL.items():
        if key in body and body[key] not in (neutral, None) and body[key] != []:
            raise _bad(f"{key} is not supported by RGPT (only {json.dumps(neutral)} is accepted)", key)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _bad("top_p must be greater than 0", "top_p")
    for key in ("max_tokens", "max_completion_tokens"):
        _number(body, key, None, 1, MAX_TOKENS_CAP, integer=True)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    seed = _number(body, "seed", None, -2 ** 63, 2 ** 63 - 1, integer=True)
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    stop = body.get("stop")
    if stop is None:
        stops: Tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _bad("stop must be a string or a list of up to 4 strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or any(k != "include_usage" for k in options):
        raise _bad("stream_options takes only include_usage", "stream_options")
    if options and not stream:
        raise _bad("stream_options needs stream: true", "stream_options")
    per_region = body.get("per_region", False)
    if not isinstance(per_region, bool):
        raise _bad("per_region must be true or false", "per_region")
    if per_region and n != 1:
        raise _bad("per_region gives one choice per region; it cannot be combined with n > 1", "n")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _bad("ignore_eos must be true or false", "ignore_eos")
    conv_mode = body.get("conv_mode")
    if conv_mode is not None and not isinstance(conv_mode, str):
        raise _bad("conv_mode must be a string", "conv_mode")

    messages, system, image = _parse_messages(body.get("messages"))
    req = ChatRequest(model, system, messages, image,
                      Sampling(temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_tokens),
                               stop=stops, seed=seed, ignore_eos=ignore_eos),
                      n=int(n), per_region=per_region, stream=stream,
                      include_usage=bool(options.get("include_usage", False)), conv_mode=conv_mode)
    count = req.region_count()
    if count > max_regions:
        params = [p.param for m in messages for p in m.parts if p.kind == "region"]
        raise _bad(f"{count} regions in one request; the limit is {max_regions} (the server's --max-regions)",
                   params[max_regions])
    if count and image is None:
        raise _bad("regions were given without an image: a region is a part of an image", "messages")
    if per_region and count == 0:
        raise _bad("per_region needs regions", "per_region")
    return req


def _parse_messages(messages: Any):
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    out, system, image = [], None, None
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad("a message must be an object with role and content", where)
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        extra = sorted(k for k in m if k not in ("role", "content", "name"))
        if extra:
            raise _bad(f"unsupported message field(s) {', '.join(extra)}", f"{where}.{extra[0]}")
        content = m.get("content")
        if isinstance(content, str):
            parts = [Part("text", content, param=f"{where}.content")]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                parsed = _parse_part(part, f"{where}.content[{j}]", role)
                if parsed.kind == "image":
                    if image is not None:
                        raise _bad("RGPT takes one image per conversation; this is a second one", parsed.param)
                    try:
                        image, alpha = split_alpha(parsed.image, parsed.param)
                    except InputError as e:
                        raise _bad(str(e), e.param) from None
                    parts.append(Part("image", param=parsed.param))
                    if alpha is not None:   # the alpha channel is a mask region, numbered where the image stands
                        parts.append(Part("region", region=alpha, param=f"{parsed.param} (alpha channel)"))
                    continue
                parts.append(parsed)
        elif content is None and role == "assistant":
            parts = [Part("text", "", param=f"{where}.content")]
        else:
            raise _bad("content must be a string or a list of content parts", f"{where}.content")
        if role in ("system", "developer"):
            if i != 0 or any(p.kind != "text" for p in parts):
                raise _bad("a system message comes first and holds text only", where)
            system = " ".join(p.text for p in parts)
            continue
        out.append(Message(role, parts, where))
    if not out or out[-1].role != "user":
        raise _bad("the last message must be the user's", f"messages[{len(messages) - 1}]")
    for k, msg in enumerate(out):
        expected = "user" if k % 2 == 0 else "assistant"
        if msg.role != expected:
            raise _bad(f"messages must alternate user and assistant (after an optional system message); "
                       f"expected {expected}, got {msg.role}", f"{msg.param}.role")
    return out, system, image


def _parse_part(part: Any, where: str, role: str) -> Part:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _bad("a content part must be an object with a type", where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise _bad("a text part needs a string text", f"{where}.text")
        return Part("text", part["text"], param=where)
    if role != "user":
        raise _bad(f"{kind} parts belong in user messages", where)
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise _bad("image_url needs a url", f"{where}.image_url")
        if not url.startswith("data:"):
            raise _bad("only data: URLs are accepted (data:image/png;base64,...); the server fetches nothing",
                       f"{where}.image_url.url")
        try:
            return Part("image", image=decode_image(url, f"{where}.image_url.url"), param=f"{where}.image_url")
        except InputError as e:
            raise _bad(str(e), e.param) from None
    if kind == "region":
        if "region" not in part:
            raise _bad("a region part needs a region (a REGION object)", f"{where}.region")
        return Part("region", region=part["region"], param=f"{where}.region")
    raise _bad(f"unsupported content part type {kind!r} (text, image_url, region)", f"{where}.type")


def render(req: ChatRequest, keep: Optional[int] = None) -> Tuple[List[Tuple[str, str]], List[Tuple[Any, str]]]:
    """The conversation's turns (role, text) and its regions (spec, param) in order; with ``keep``, only region
    number ``keep`` (0-based) of the request is supplied, as region 1 (``per_region``)."""
    turns, regions = [], []
    k = 0
    for msg in req.messages:
        inline = not msg.names_regions()
        pieces = []
        for part in msg.parts:
            if part.kind == "text":
                pieces.append(part.text.strip())
            elif part.kind == "region":
                if keep is None or k == keep:
                    regions.append((part.region, part.param))
                    if inline:
                        pieces.append(f"<region{len(regions)}>")
                k += 1
        text = " ".join(p for p in pieces if p)
        if any(p.kind == "image" for p in msg.parts):
            text = with_image(text)     # LLaVA's convention: the image leads its message
        turns.append((msg.role, text))
    return turns, regions


def conversation_prompt(turns: Sequence[Tuple[str, str]], system: Optional[str], conv_mode: str) -> str:
    """The request's prompt (:func:`rgpt_llava.prompt.build_prompt`); an unknown template is the client's 400."""
    try:
        check_conv_mode(conv_mode)
    except ValueError as e:
        raise _bad(f"conv_mode {e}", "conv_mode") from None
    return build_prompt(turns, conv_mode, system)


# ---------------------------------------------------------------------------------------------------------------------
# backends: the model in this process, or LLaVA's controller and its workers
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Event:
    index: int
    text: str
    finish_reason: Optional[str]
    error: Optional[str] = None    # a failure reported by a worker after the stream began


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: Dict[int, int] = field(default_factory=dict)

    def body(self) -> dict:
        c = sum(self.completion_tokens.values())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c}


class LocalBackend:
    def __init__(self, engine: RegionEngine, conv_mode: str):
        self.engine, self.conv_mode = engine, conv_mode
        self.executor = engine.executor
        self.sam = engine.sam

    def models(self) -> List[str]:
        return [self.engine.name]

    def start(self, req: ChatRequest) -> Tuple[Iterator[List[Event]], Usage]:
        """Checks the request against the model (a 400 here, before any output) and returns the event stream."""
        if req.model is not None and req.model != self.engine.name:
            raise APIError(404, f"the model {req.model!r} does not exist here; served: {self.engine.name}", "model",
                           code="model_not_found")
        mode = req.conv_mode or self.conv_mode
        image_size = req.image.size if req.image is not None else None
        choices = range(req.region_count()) if req.per_region else [None] * req.n
        items = []
        try:
            for keep in choices:
                turns, regions = render(req, keep)
                prompt = conversation_prompt(turns, req.system, mode)
                items.append((prompt, parse_regions(regions, image_size, self.engine.max_regions, image=req.image,
                                                    sam=self.sam) if regions else []))
            job = self.engine.prepare(req.image, items, req.sampling, param="messages")
        except InputError as e:
            raise _bad(str(e), e.param) from None
        usage = Usage(prompt_tokens=sum(job.prompt_tokens) if req.per_region else job.prompt_tokens[0])

        def events():
            for deltas in self.engine.generate(job, stream=req.stream):
                for d in deltas:
                    usage.completion_tokens[d.index] = d.completion_tokens
                yield [Event(d.index, d.text, d.finish_reason) for d in deltas]
        return events(), usage


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

    def _worker(self, model: str, refresh: bool = False) -> str:
        if refresh:
            self._post("/refresh_all_workers")
        address = self._post("/get_worker_address", {"model": model}).get("address", "")
        if not address:
            raise APIError(404, f"no worker serves the model {model!r}; served: {', '.join(self.models()) or 'none'}",
                           "model", code="model_not_found")
        return address

    def start(self, req: ChatRequest) -> Tuple[Iterator[List[Event]], Usage]:
        import requests
        models = self.models()
        model = req.model or (models[0] if len(models) == 1 else None)
        if model is None:
            raise _bad(f"name the model: the controller serves {', '.join(models) or 'none'}", "model")
        image_b64 = None
        if req.image is not None:
            buf = io.BytesIO()
            req.image.save(buf, format="PNG")
            image_b64 = base64.b64encode(buf.getvalue()).decode()
        mode = req.conv_mode or self.conv_mode
        usage = Usage()
        calls = []
        for keep in (range(req.region_count()) if req.per_region else [None] * req.n):
            turns, regions = render(req, keep)
            if self.sam is not None:
                regions = [(self._resolved(spec, param, req.image), param) for spec, param in regions]
            payload = {"model": model, "prompt": conversation_prompt(turns, req.system, mode),
                       "images": [image_b64] if image_b64 else [],
                       "regions": [[_region_json(spec) for spec, _ in regions]] if image_b64 else [],
                       "temperature": req.sampling.temperature, "top_p": req.sampling.top_p,
                       "max_new_tokens": req.sampling.max_new_tokens, "stop": list(req.sampling.stop) or None,
                       "seed": None if req.sampling.seed is None else req.sampling.seed + len(calls),
                       "ignore_eos": req.sampling.ignore_eos}
            calls.append(payload)
        responses = []
        for payload in calls:   # opened before any output, so a bad request is still a 4xx
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
            responses.append((r, len(payload["prompt"])))

        def events():
            for index, (r, prompt_len) in enumerate(responses):
                sent = 0
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
                    if chunk.get("finish_reason") and (index == 0 or req.per_region):
                        usage.prompt_tokens += counts.get("prompt_tokens", 0)   # n copies of one prompt count once
                    yield [Event(index, answer[sent:], chunk.get("finish_reason"))]
                    sent = len(answer)
        return events(), usage

    def _resolved(self, spec: Any, param: str, image) -> Any:
        if not isinstance(spec, dict) or not needs_sam(spec):
            return spec
        try:
            return parse_regions([(spec, param)], image.size, image=image, sam=self.sam)[0]
        except InputError as e:
            raise _bad(str(e), e.param) from None


def _worker_error(r) -> str:
    try:
        return json.loads(r.content.rstrip(b"\0")).get("text", r.text)
    except ValueError:
        return r.text


def _region_json(spec: Any) -> Any:
    """A region for the worker: REGION JSON as given, a decoded mask (an alpha channel, a mask SAM made) as a PNG
    data URL."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, Region):
        from PIL import Image
        from rgpt_llava.serve.describe import full_mask
        spec = Image.fromarray(full_mask(spec, *spec.image_size).astype("uint8") * 255)
    buf = io.BytesIO()
    spec.save(buf, format="PNG")
    return {"mask": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}


# ---------------------------------------------------------------------------------------------------------------------
# describe everything
# ---------------------------------------------------------------------------------------------------------------------
DESCRIBE_KEYS = {"model", "image", "regions", "prompt", "max_regions", "max_tokens", "conv_mode", "points_per_side",
                 "pred_iou_thresh", "stability_score_thresh"}


def parse_describe_request(body: Any, backend, max_regions: int = MAX_REGIONS) -> Tuple[ChatRequest, List[Region]]:
    """``POST /v1/regions/describe``: the image, its regions (given, with SAM's prompts resolved, or proposed by SAM)
    and the per-region request that answers the prompt about each."""
    from rgpt_llava.mm_utils import region_references
    from rgpt_llava.serve.describe import DEFAULT_PROMPT, proposals
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in DESCRIBE_KEYS)
    if unknown:
        raise _bad(f"unrecognized argument(s): {', '.join(unknown)} (known: {', '.join(sorted(DESCRIBE_KEYS))})",
                   unknown[0])
    model, conv_mode, prompt = body.get("model"), body.get("conv_mode"), body.get("prompt", DEFAULT_PROMPT)
    for key, value in (("model", model), ("conv_mode", conv_mode)):
        if value is not None and not isinstance(value, str):
            raise _bad(f"{key} must be a string", key)
    if not isinstance(prompt, str) or sorted(set(region_references(prompt))) != [0]:
        raise _bad(f"prompt must be a string that names the one region as <region1>, e.g. {DEFAULT_PROMPT!r}",
                   "prompt")
    limit = _number(body, "max_regions", max_regions, 1, max_regions, integer=True)
    max_tokens = _number(body, "max_tokens", 64, 1, MAX_TOKENS_CAP, integer=True)
    if not isinstance(body.get("image"), str):
        raise _bad("image must be a data URL (data:image/jpeg;base64,...) or base64", "image")
    try:
        image = decode_image(body["image"], "image").convert("RGB")
        given = body.get("regions")
        if given is not None:
            if not isinstance(given, list) or not given:
                raise _bad("regions must be a non-empty list of REGION objects (or left out: SAM proposes them)",
                           "regions")
            regions = parse_regions([(r, f"regions[{k}]") for k, r in enumerate(given)], image.size, max_regions,
                                    image=image, sam=backend.sam)
        else:
            if backend.sam is None:
                raise _bad("no regions were given and this server has no SAM to propose them: send regions, or "
                           "start the server with --sam-model PATH", "regions")
            grid = {"points_per_side": _number(body, "points_per_side", 32, 1, 128, integer=True),
                    "pred_iou_thresh": _number(body, "pred_iou_thresh", 0.88, 0.0, 1.0),
                    "stability_score_thresh": _number(body, "stability_score_thresh", 0.95, 0.0, 1.0)}
            regions = proposals(backend.sam, image, limit, **grid)
    except InputError as e:
        raise _bad(str(e), e.param) from None
    return describe_request(image, regions, prompt, int(max_tokens), model, conv_mode), regions


def describe_request(image, regions: Sequence[Region], prompt: str, max_tokens: int, model: Optional[str] = None,
                     conv_mode: Optional[str] = None) -> ChatRequest:
    """One greedy question per region (``per_region``): the prompt names the region as ``<region1>``."""
    parts = [Part("image", param="image")] + [Part("region", region=r, param=f"regions[{r.index}]") for r in regions]
    parts.append(Part("text", prompt, param="prompt"))
    return ChatRequest(model, None, [Message("user", parts, "prompt")], image,
                       Sampling(temperature=0.0, max_new_tokens=max_tokens), per_region=True, conv_mode=conv_mode)


# ---------------------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------------------
def build_app(backend, max_regions: int = MAX_REGIONS, limit_concurrency: int = 5):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="rgpt_llava OpenAI-compatible API")
    executor = getattr(backend, "executor", None)     # the model's own thread; None: network calls, any thread
    slots = {}

    def gate() -> asyncio.Semaphore:                   # made inside the server's event loop
        if "s" not in slots:
            slots["s"] = asyncio.Semaphore(limit_concurrency)
        return slots["s"]

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):   # never a traceback to the client
        return error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    @app.get("/v1/models")
    async def models():
        try:
            names = await run_on(None, backend.models)
        except APIError as e:
            return error(e)
        now = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "rgpt_llava"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as e:
            return error(_bad(f"the request body is not valid JSON ({e})"))
        try:
            req = await run_on(None, parse_chat_request, body, max_regions)
            events, usage = await run_on(executor, backend.start, req)
        except APIError as e:
            return error(e)
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        model = req.model or (await run_on(None, backend.models))[0]
        count = req.region_count() if req.per_region else req.n
        if not req.stream:
            texts, reasons = [""] * count, [None] * count
            async with gate():
                async for evs in iterate_on(executor, events):
                    for ev in evs:
                        if ev.error:
                            return error(APIError(502, ev.error, type_="server_error"))
                        texts[ev.index] += ev.text
                        reasons[ev.index] = ev.finish_reason or reasons[ev.index]
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": None,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                                 "logprobs": None, "finish_reason": reasons[i]} for i in range(count)],
                    "usage": usage.body()}

        def chunk(choices: list, **extra) -> bytes:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None, "choices": choices, **extra}
            return f"data: {json.dumps(obj)}\n\n".encode()

        async def sse():
            async with gate():
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(count)])
                async for evs in iterate_on(executor, events):
                    out = []
                    for ev in evs:
                        if ev.error:   # after the 200 went out: OpenAI's error object as the last event
                            failure = APIError(502, ev.error, type_="server_error").body()
                            yield f"data: {json.dumps(failure)}\n\n".encode()
                            return
                        out.append({"index": ev.index, "delta": {"content": ev.text} if ev.text else {},
                                    "logprobs": None, "finish_reason": ev.finish_reason})
                    if out:
                        yield chunk(out)
                if req.include_usage:
                    yield chunk([], usage=usage.body())
                yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/regions/describe")
    async def describe(request: Request):
        from rgpt_llava.serve.describe import records
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return error(_bad(f"the request body is not valid JSON ({e})"))
        try:
            req, regions = await run_on(executor, parse_describe_request, body, backend, max_regions)
            texts = [""] * len(regions)
            if regions:
                events, usage = await run_on(executor, backend.start, req)
                async with gate():
                    async for evs in iterate_on(executor, events):
                        for ev in evs:
                            if ev.error:
                                raise APIError(502, ev.error, type_="server_error")
                            texts[ev.index] += ev.text
            else:
                usage = Usage()
        except APIError as e:
            return error(e)
        width, height = req.image.size
        return {"object": "region.descriptions", "model": req.model or (await run_on(None, backend.models))[0],
                "width": width, "height": height, "prompt": req.messages[0].parts[-1].text,
                "regions": records(regions, [t.strip() for t in texts], width, height), "usage": usage.body()}

    return app


class StartupError(Exception):
    """A server cannot start: the message names the flag and the problem."""


def check_listen_address(host: str, port: int) -> None:
    """Bind ``host:port`` once before the model loads (shared by the API, the worker and the page): a port out of
    range or taken, or a host this machine does not have, is then a line naming the flag rather than a traceback
    after minutes of loading. The socket is closed at once; the server binds its own."""
    if not 1 <= port <= 65535:
        raise StartupError(f"--port {port}: a port is 1-65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise StartupError(f"--host {host}: no such host ({e.strerror})") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gradio do
        try:
            probe.bind(address)
        except OSError as e:
            raise StartupError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from e


def backend_from_args(args, controller: Optional[str]):
    """The backend a server's flags ask for (shared by this API and the web page): ``--model-path`` loads the model
    (and ``--sam-model``) in this process; otherwise the model workers behind LLaVA's ``controller``, with SAM, when
    given, loaded here to turn clicks, scribbles and snapped boxes into masks before a request is forwarded."""
    if args.model_path:
        from rgpt_llava.model.builder import CheckpointError
        try:
            engine = RegionEngine.load(args.model_path, args.model_base, args.device, args.load_8bit, args.load_4bit,
                                       max_regions=args.max_regions, sam_model=args.sam_model,
                                       name=args.model_name or model_name_of(args.model_path))
        except (CheckpointError, ValueError, FileNotFoundError, NotImplementedError) as e:
            where = "" if str(e).startswith("--sam-model") else f"--model-path {args.model_path}: "
            raise StartupError(f"{where}{e}") from e
        return LocalBackend(engine, args.conv_mode)
    from rgpt_llava.sam import SamModelError, SamPrompter
    try:
        sam = SamPrompter(args.sam_model, args.device) if args.sam_model else None
    except SamModelError as e:
        raise StartupError(str(e)) from e
    return ControllerBackend(controller, args.conv_mode, sam=sam)


def main(argv=None) -> int:
    from rgpt_llava.model.builder import device_arg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="serve this checkpoint in this process")
    src.add_argument("--controller-address", help="forward to the model workers behind LLaVA's controller")
    p.add_argument("--model-base", default=None)
    p.add_argument("--model-name", default=None, help="the name clients ask for (default: the checkpoint folder's)")
    p.add_argument("--device", type=device_arg, default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--conv-mode", default="vicuna_v1", help="LLaVA's conversation template (default vicuna_v1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS, help="regions per request")
    p.add_argument("--limit-concurrency", type=int, default=5, help="requests generating at once; others queue")
    p.add_argument("--sam-model", default=None, metavar="PATH",
                   help="a local SAM folder: points, scribbles and snapped boxes as regions; region proposals")
    args = p.parse_args(argv)
    for flag in ("max_regions", "limit_concurrency"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        check_listen_address(args.host, args.port)
        backend = backend_from_args(args, args.controller_address)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn
    print(f"OpenAI-compatible API at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(build_app(backend, args.max_regions, args.limit_concurrency), host=args.host, port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
