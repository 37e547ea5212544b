"""The chat protocol: what a request to ask about regions is, how it is checked, and how it becomes a prompt.

Every server reads its requests here: the OpenAI-compatible API (``POST /v1/chat/completions``,
``POST /v1/regions/describe``), the web page (its conversation becomes a :class:`ChatRequest`), and -- for the
sampling parameters -- LLaVA's model worker. A bad request is an :class:`APIError` (status 400 from
:func:`bad_request`) naming the item (``param``, e.g. ``messages[0].content[2].region``); everything that needs the
model (tokens, region geometry) is checked by the backend (:mod:`rgpt_llava.serve.backends`).

A request's regions are numbered in order of appearance, across all messages. :func:`turns_and_regions` turns a
request into the conversation's (role, text) turns and its regions; :func:`conversation_prompt` renders the turns with
the one prompt builder, :mod:`rgpt_llava.prompt`. A new prompt form (a field, a content part) goes here.
"""
import json
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from rgpt_llava.constants import REGION_PLACEHOLDER_PATTERN
from rgpt_llava.mm_utils import region_references
from rgpt_llava.prompt import build_prompt, check_conv_mode, with_image
from rgpt_llava.regions.region import Region
from rgpt_llava.serve.describe import DEFAULT_PROMPT, proposals
from rgpt_llava.serve.engine import Sampling
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError, decode_image, parse_regions, split_alpha

PLACEHOLDER = re.compile(REGION_PLACEHOLDER_PATTERN)
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
DESCRIBE_KEYS = {"model", "image", "regions", "prompt", "max_regions", "max_tokens", "conv_mode", "points_per_side",
                 "pred_iou_thresh", "stability_score_thresh"}


class APIError(Exception):
    """A request the server refuses or cannot answer, in OpenAI's error shape (:meth:`body`) with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error",
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None) -> APIError:
    """The client's mistake (HTTP 400): ``message`` says what is wrong with ``param``."""
    return APIError(400, message, param)


def refused_input(e: InputError) -> APIError:
    """An input that :mod:`rgpt_llava.serve.inputs` or the engine refused, as the client's 400."""
    return bad_request(str(e), e.param)


# ---------------------------------------------------------------------------------------------------------------------
# parameters: one check per kind of value, shared by the API and LLaVA's worker (each words the refusal its own way)
# ---------------------------------------------------------------------------------------------------------------------
class ParamError(ValueError):
    """A parameter that is not what it must be: ``expected`` describes the value wanted (``"a number in [0, 2]"``)."""

    def __init__(self, param: str, expected: str, value: Any):
        super().__init__(f"{param}: expected {expected}, got {value!r}")
        self.param, self.expected, self.value = param, expected, value

    def must_be(self, got: bool = True) -> str:
        """OpenAI's wording: ``n must be an integer in [1, 16], got 99``."""
        return f"{self.param} must be {self.expected}" + (f", got {self.value!r}" if got else "")

    def expected_got(self, got: bool = True) -> str:
        """LLaVA's worker's wording, after the param's name: ``expected a number in [0, 1], got 2``."""
        return f"expected {self.expected}" + (f", got {self.value!r}" if got else "")


def number(body: dict, key: str, default, lo: Optional[float] = None, hi: Optional[float] = None,
           integer: bool = False):
    """``body[key]``, a number (an int with ``integer``; never a bool) in ``[lo, hi]``; ``default`` when absent or
    null."""
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (lo is not None and not lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise ParamError(key, kind if lo is None else f"{kind} in [{lo:g}, {hi:g}]", value)
    return value


def flag(body: dict, key: str) -> bool:
    """``body[key]``, true or false (false when absent)."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ParamError(key, "true or false", value)
    return value


def stops(body: dict, key: str = "stop", limit: Optional[int] = None) -> Tuple[str, ...]:
    """``body[key]``: a stop string or a list of them (at most ``limit``), as a tuple."""
    stop = body.get(key)
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and (limit is None or len(stop) <= limit) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise ParamError(key, "a string or a list of " + (f"up to {limit} strings" if limit else "strings"), stop)


# ---------------------------------------------------------------------------------------------------------------------
# the request
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Part:
    kind: str                      # text | region | image
    text: str = ""
    # REGION JSON as the client sent it, a decoded mask image (an image's alpha channel) or a parsed Region (the page's
    # and describe's regions, SAM's masks): parsed against the image by the backend, sent to a worker by
    # rgpt_llava.serve.backends.worker_region
    region: Any = None
    image: Any = None              # the decoded image of an image part
    param: str = ""


@dataclass
class Message:
    role: str
    parts: List[Part]
    param: str

    def names_regions(self) -> bool:
        return any(PLACEHOLDER.search(p.text) for p in self.parts if p.kind == "text")


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

    def choices(self) -> list:
        """What each choice answers, for :func:`turns_and_regions`'s ``keep``: one region each (``per_region``), or
        the whole request ``n`` times."""
        return list(range(self.region_count())) if self.per_region else [None] * self.n


def _param(read, *args, got: bool = True, **kwargs):
    """A shared parameter check, refused in OpenAI's wording."""
    try:
        return read(*args, **kwargs)
    except ParamError as e:
        raise bad_request(e.must_be(got), e.param) from None


def parse_chat_request(body: Any, max_regions: int = MAX_REGIONS) -> ChatRequest:
    """Checks everything but what needs the model (tokens, region geometry); errors are :class:`APIError` 400."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in KNOWN and k not in NEUTRAL)
    if unknown:
        raise bad_request(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])
    for key, neutral in NEUTRAL.items():
        if key in body and body[key] not in (neutral, None) and body[key] != []:
            raise bad_request(f"{key} is not supported by RGPT (only {json.dumps(neutral)} is accepted)", key)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    temperature = _param(number, body, "temperature", 1.0, 0.0, 2.0)
    top_p = _param(number, body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be greater than 0", "top_p")
    for key in ("max_tokens", "max_completion_tokens"):
        _param(number, body, key, None, 1, MAX_TOKENS_CAP, integer=True)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    seed = _param(number, body, "seed", None, -2 ** 63, 2 ** 63 - 1, integer=True)
    n = _param(number, body, "n", 1, 1, MAX_N, integer=True)
    stop = _param(stops, body, limit=4, got=False)
    stream = _param(flag, body, "stream", got=False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or any(k != "include_usage" for k in options):
        raise bad_request("stream_options takes only include_usage", "stream_options")
    if options and not stream:
        raise bad_request("stream_options needs stream: true", "stream_options")
    per_region = _param(flag, body, "per_region", got=False)
    if per_region and n != 1:
        raise bad_request("per_region gives one choice per region; it cannot be combined with n > 1", "n")
    ignore_eos = _param(flag, body, "ignore_eos", got=False)
    conv_mode = body.get("conv_mode")
    if conv_mode is not None and not isinstance(conv_mode, str):
        raise bad_request("conv_mode must be a string", "conv_mode")

    messages, system, image = _parse_messages(body.get("messages"))
    req = ChatRequest(model, system, messages, image,
                      Sampling(temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_tokens),
                               stop=stop, seed=seed, ignore_eos=ignore_eos),
                      n=int(n), per_region=per_region, stream=stream,
                      include_usage=bool(options.get("include_usage", False)), conv_mode=conv_mode)
    count = req.region_count()
    if count > max_regions:
        params = [p.param for m in messages for p in m.parts if p.kind == "region"]
        raise bad_request(f"{count} regions in one request; the limit is {max_regions} (the server's --max-regions)",
                          params[max_regions])
    if count and image is None:
        raise bad_request("regions were given without an image: a region is a part of an image", "messages")
    if per_region and count == 0:
        raise bad_request("per_region needs regions", "per_region")
    return req


def _parse_messages(messages: Any):
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out, system, image = [], None, None
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object with role and content", where)
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        extra = sorted(k for k in m if k not in ("role", "content", "name"))
        if extra:
            raise bad_request(f"unsupported message field(s) {', '.join(extra)}", f"{where}.{extra[0]}")
        content = m.get("content")
        if isinstance(content, str):
            parts = [Part("text", content, param=f"{where}.content")]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                parsed = _parse_part(part, f"{where}.content[{j}]", role)
                if parsed.kind == "image":
                    if image is not None:
                        raise bad_request("RGPT takes one image per conversation; this is a second one", parsed.param)
                    try:
                        image, alpha = split_alpha(parsed.image, parsed.param)
                    except InputError as e:
                        raise refused_input(e) from None
                    parts.append(Part("image", param=parsed.param))
                    if alpha is not None:   # the alpha channel is a mask region, numbered where the image stands
                        parts.append(Part("region", region=alpha, param=f"{parsed.param} (alpha channel)"))
                    continue
                parts.append(parsed)
        elif content is None and role == "assistant":
            parts = [Part("text", "", param=f"{where}.content")]
        else:
            raise bad_request("content must be a string or a list of content parts", f"{where}.content")
        if role in ("system", "developer"):
            if i != 0 or any(p.kind != "text" for p in parts):
                raise bad_request("a system message comes first and holds text only", where)
            system = " ".join(p.text for p in parts)
            continue
        out.append(Message(role, parts, where))
    if not out or out[-1].role != "user":
        raise bad_request("the last message must be the user's", f"messages[{len(messages) - 1}]")
    for k, msg in enumerate(out):
        expected = "user" if k % 2 == 0 else "assistant"
        if msg.role != expected:
            raise bad_request(f"messages must alternate user and assistant (after an optional system message); "
                              f"expected {expected}, got {msg.role}", f"{msg.param}.role")
    return out, system, image


def _parse_part(part: Any, where: str, role: str) -> Part:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request("a content part must be an object with a type", where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise bad_request("a text part needs a string text", f"{where}.text")
        return Part("text", part["text"], param=where)
    if role != "user":
        raise bad_request(f"{kind} parts belong in user messages", where)
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise bad_request("image_url needs a url", f"{where}.image_url")
        if not url.startswith("data:"):
            raise bad_request("only data: URLs are accepted (data:image/png;base64,...); the server fetches nothing",
                              f"{where}.image_url.url")
        try:
            return Part("image", image=decode_image(url, f"{where}.image_url.url"), param=f"{where}.image_url")
        except InputError as e:
            raise refused_input(e) from None
    if kind == "region":
        if "region" not in part:
            raise bad_request("a region part needs a region (a REGION object)", f"{where}.region")
        return Part("region", region=part["region"], param=f"{where}.region")
    raise bad_request(f"unsupported content part type {kind!r} (text, image_url, region)", f"{where}.type")


# ---------------------------------------------------------------------------------------------------------------------
# the request -> the conversation and its regions -> the prompt
# ---------------------------------------------------------------------------------------------------------------------
def turns_and_regions(req: ChatRequest, keep: Optional[int] = None
                      ) -> Tuple[List[Tuple[str, str]], List[Tuple[Any, str]]]:
    """The conversation's turns (role, text) and its regions (spec, param) in order; with ``keep``, only region
    number ``keep`` (0-based) of the request is supplied, as region 1 (``per_region``). A message whose text names no
    region gets a placeholder where each of its region parts stands."""
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
        raise bad_request(f"conv_mode {e}", "conv_mode") from None
    return build_prompt(turns, conv_mode, system)


def describe_request(image, regions: Sequence[Region], prompt: str, max_tokens: int, model: Optional[str] = None,
                     conv_mode: Optional[str] = None) -> ChatRequest:
    """"Describe everything" as a chat request: one greedy question per region (``per_region``); the prompt names
    the region as ``<region1>``."""
    parts = [Part("image", param="image")] + [Part("region", region=r, param=f"regions[{r.index}]") for r in regions]
    parts.append(Part("text", prompt, param="prompt"))
    return ChatRequest(model, None, [Message("user", parts, "prompt")], image,
                       Sampling(temperature=0.0, max_new_tokens=max_tokens), per_region=True, conv_mode=conv_mode)


def parse_describe_request(body: Any, sam=None, max_regions: int = MAX_REGIONS
                           ) -> Tuple[ChatRequest, List[Region]]:
    """``POST /v1/regions/describe``: the image, its regions (given, with SAM's prompts resolved by ``sam``, or
    proposed by ``sam``) and the per-region request that answers the prompt about each."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in DESCRIBE_KEYS)
    if unknown:
        raise bad_request(f"unrecognized argument(s): {', '.join(unknown)} (known: {', '.join(sorted(DESCRIBE_KEYS))})",
                          unknown[0])
    model, conv_mode, prompt = body.get("model"), body.get("conv_mode"), body.get("prompt", DEFAULT_PROMPT)
    for key, value in (("model", model), ("conv_mode", conv_mode)):
        if value is not None and not isinstance(value, str):
            raise bad_request(f"{key} must be a string", key)
    if not isinstance(prompt, str) or sorted(set(region_references(prompt))) != [0]:
        raise bad_request(f"prompt must be a string that names the one region as <region1>, e.g. {DEFAULT_PROMPT!r}",
                          "prompt")
    limit = _param(number, body, "max_regions", max_regions, 1, max_regions, integer=True)
    max_tokens = _param(number, body, "max_tokens", 64, 1, MAX_TOKENS_CAP, integer=True)
    if not isinstance(body.get("image"), str):
        raise bad_request("image must be a data URL (data:image/jpeg;base64,...) or base64", "image")
    try:
        image = decode_image(body["image"], "image").convert("RGB")
        given = body.get("regions")
        if given is not None:
            if not isinstance(given, list) or not given:
                raise bad_request("regions must be a non-empty list of REGION objects (or left out: SAM proposes "
                                  "them)", "regions")
            regions = parse_regions([(r, f"regions[{k}]") for k, r in enumerate(given)], image.size, max_regions,
                                    image=image, sam=sam)
        else:
            if sam is None:
                raise bad_request("no regions were given and this server has no SAM to propose them: send regions, "
                                  "or start the server with --sam-model PATH", "regions")
            grid = {"points_per_side": _param(number, body, "points_per_side", 32, 1, 128, integer=True),
                    "pred_iou_thresh": _param(number, body, "pred_iou_thresh", 0.88, 0.0, 1.0),
                    "stability_score_thresh": _param(number, body, "stability_score_thresh", 0.95, 0.0, 1.0)}
            regions = proposals(sam, image, limit, **grid)
    except InputError as e:
        raise refused_input(e) from None
    return describe_request(image, regions, prompt, int(max_tokens), model, conv_mode), regions
