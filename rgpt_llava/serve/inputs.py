"""What a request carries, decoded and checked before the model sees it: images and REGION JSON.

Every interactive entry point (the CLI, ``describe``, the model worker, the OpenAI-style API, the web page) reads its
images and regions through here -- regions through :func:`parse_regions`, then the kinds table's
:func:`rgpt_llava.regions.kinds.parse_region`, the same code as training and evaluation. Problems are
:class:`InputError` (a ``ValueError``) naming the item (``param``) and what is wrong; the servers answer them with a
4xx.

* Images: base64, a ``data:image/...;base64,`` URL, or (CLI) a file. EXIF orientation is applied
  (``ImageOps.exif_transpose``) because people draw regions on photos as their viewer shows them, and viewers apply
  it while ``PIL.Image.open`` does not. (Training and evaluation keep the datasets' raw pixels: their annotations are
  in that frame.) An RGBA / LA image whose alpha channel is not fully opaque carries one mask (nonzero alpha =
  inside), the convention of Describe-Anything's server: :func:`split_alpha`.
* REGION (``region.schema.json``, docs/SERVING.md): the kinds of :mod:`rgpt_llava.regions.kinds` that have a JSON
  schema -- ``{"box": [x1, y1, x2, y2]}``, ``{"polygon": [...]}``, ``{"mask": "data:image/png;base64,..."}``, ... and
  prompts that SAM turns into masks where the server has ``--sam-model`` (:mod:`rgpt_llava.sam`); nothing else (a
  server never reads files named by a client).
"""
import base64
import dataclasses
import binascii
import functools
import io
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from PIL import Image, ImageOps, UnidentifiedImageError

from rgpt_llava.regions import kinds as region_kinds
from rgpt_llava.regions.kinds import needs_sam, parse_region
from rgpt_llava.regions.prompts import require_sam
from rgpt_llava.regions.region import Region

MAX_IMAGE_BYTES = 20 * 1024 * 1024        # decoded size of one image (or mask) in a request
MAX_IMAGE_PIXELS = 64 * 1024 * 1024       # PIL's decompression-bomb guard, per image
MAX_REGIONS = 64                          # regions per request (--max-regions on the servers)
SCHEMA_PATH = Path(__file__).with_name("region.schema.json")
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,", re.IGNORECASE)


class InputError(ValueError):
    """A request item that cannot be used: ``param`` names it (e.g. ``messages[0].content[2].region``)."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------
def decode_base64(data: Any, param: str, what: str = "image") -> bytes:
    """The bytes of a base64 string or a ``data:image/...;base64,`` URL."""
    if not isinstance(data, str) or not data:
        raise InputError(f"expected a base64 {what} or a data:image/...;base64, URL, got {type(data).__name__}", param)
    if data.startswith("data:"):
        match = _DATA_URL.match(data)
        if not match:
            raise InputError(f"a data URL must look like data:image/png;base64,... (got {data[:40]!r})", param)
        data = data[match.end():]
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InputError(f"the {what} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"not valid base64 ({e})", param) from None


def open_image_bytes(raw: bytes, param: str, what: str = "image") -> Image.Image:
    """A decoded, fully loaded, EXIF-oriented PIL image (its mode kept, for :func:`split_alpha`)."""
    try:
        with _pixel_limit():
            image = Image.open(io.BytesIO(raw))
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise InputError(f"the {what} has more than {MAX_IMAGE_PIXELS} pixels", param) from None
    except UnidentifiedImageError:
        # PIL's own words name a BytesIO object's address: different in every run, and nothing to a client
        raise InputError(f"cannot decode the {what} (not an image format PIL reads)", param) from None
    except Exception as e:  # PIL raises assorted types on undecodable data (UnidentifiedImageError, OSError, ...)
        raise InputError(f"cannot decode the {what} ({type(e).__name__}: {e})", param) from None
    if image.width < 1 or image.height < 1:
        raise InputError(f"the {what} is empty ({image.width}x{image.height})", param)
    return image


def decode_image(data: Any, param: str) -> Image.Image:
    return open_image_bytes(decode_base64(data, param), param)


def load_image_file(path: str, param: str = "--image-file") -> Image.Image:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", param) from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e})", param) from None
    return open_image_bytes(raw, f"{param} {path}")


def split_alpha(image: Image.Image, param: str) -> Tuple[Image.Image, Optional[Image.Image]]:
    """(RGB image, its alpha channel as a mask or None). The alpha is a mask only when some pixel is not opaque."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        lo, hi = alpha.getextrema()
        rgb = rgba.convert("RGB")
        if lo == 255:
            return rgb, None
        if hi == 0:
            raise InputError("the image's alpha channel (its mask) is empty: every pixel is transparent", param)
        return rgb, alpha
    return image.convert("RGB"), None


class _pixel_limit:
    """PIL's decompression-bomb limit for the duration of one decode (it is a process-wide setting)."""

    def __enter__(self):
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS // 2    # PIL raises above twice this value
        return self

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self.saved


# ---------------------------------------------------------------------------------------------------------------------
# REGION
# ---------------------------------------------------------------------------------------------------------------------
def __getattr__(name):
    # Read from the kinds table at each use, not copied at import: a kind registered later is a REGION too.
    if name == "REGION_KINDS":
        return region_kinds.request_kinds()
    if name == "COMPANIONS":      # fields allowed beside a kind
        return region_kinds.companions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def region_schema() -> dict:
    """The REGION schema, derived from the kinds table (``SCHEMA_PATH`` holds the same, written out)."""
    return region_kinds.region_schema()


@functools.lru_cache(maxsize=None)
def _kind_validator(kind: "region_kinds.RegionKind"):
    from jsonschema import Draft202012Validator
    sub = {"$ref": f"#/$defs/{kind.key}", "$defs": region_schema()["$defs"]}
    return Draft202012Validator(sub)


def check_region_json(obj: Any, param: str) -> str:
    """Validate one REGION against ``region.schema.json``; returns its kind. Messages name the offending field."""
    if not isinstance(obj, dict):
        raise InputError(f"a REGION must be an object such as {{\"box\": [x1, y1, x2, y2]}}, got "
                         f"{type(obj).__name__}", param)
    keys, companions = region_kinds.request_kinds(), region_kinds.companions()
    kinds = [k for k in obj if k in keys]
    unknown = sorted(str(k) for k in obj if k not in keys and k not in companions)
    if unknown:
        raise InputError(f"unknown REGION field(s) {unknown}; a REGION has exactly one of {', '.join(keys)}",
                         param)
    if len(kinds) != 1:
        raise InputError(f"a REGION has exactly one of {', '.join(keys)}, got {kinds or 'none'}", param)
    kind = kinds[0]
    stray = [k for k, owner in companions.items() if k in obj and owner != kind]
    if stray:
        raise InputError(f"{stray[0]!r} belongs with {companions[stray[0]]!r}, not with {kind!r}", param)
    errors = list(_leaf_errors(_kind_validator(region_kinds.request_kind(kind)).iter_errors(obj)))
    if errors:
        # the shallowest problem reads best ("polygon: [...] is too short" rather than one alternative's detail);
        # among equals, a wrong count or value before a wrong type
        err = min(errors, key=lambda e: (len(e.absolute_path), e.validator == "type"))
        path = list(err.absolute_path) or [kind]
        where = str(path[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
        raise InputError(f"{where}: {_short(err.message)}", param)
    return kind


def _leaf_errors(errors):
    """The errors of every alternative of a oneOf, not the oneOf's own "is not valid under any of the given schemas"."""
    for e in errors:
        if e.context:
            yield from _leaf_errors(e.context)
        else:
            yield e


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def region_spec(obj: Any, param: str) -> Any:
    """A checked REGION as a spec for :func:`rgpt_llava.geometry.parse_region` (a mask's data URL decoded)."""
    kind = check_region_json(obj, param)
    if region_kinds.request_kind(kind).data_url:
        return {**obj, kind: open_image_bytes(decode_base64(obj[kind], param, kind), param, kind)}
    return obj


def parse_regions(items: Sequence[Tuple[Any, Optional[str]]], image_size: Tuple[int, int],
                  max_regions: int = MAX_REGIONS, image: Optional[Image.Image] = None, sam=None,
                  cli: bool = False) -> List[Region]:
    """The one region parser of every entry point. ``items``: (spec, param) pairs, numbered 1.. in order; specs are
    REGION JSON, a decoded mask image or a :class:`Region` (renumbered to its place), and with ``cli`` also the CLI's
    text specs (``box:x1,y1,x2,y2``, ``mask:FILE.png``: they may read files, so only the local user's, never a
    client's). Each is parsed against the image by :func:`rgpt_llava.regions.kinds.parse_region`; prompts for SAM
    are resolved by ``sam`` (a :class:`rgpt_llava.sam.SamPrompter`) on ``image``. Problems are :class:`InputError`
    naming ``param``."""
    if len(items) > max_regions:
        raise InputError(f"{len(items)} regions in one request; the limit is {max_regions} (the server's "
                         f"--max-regions)", items[max_regions][1])
    regions = []
    for k, (spec, param) in enumerate(items):
        text = cli and isinstance(spec, str)
        if isinstance(spec, Region):
            # a region parsed earlier (a mask SAM made, the page's) keeps its pixels; its number is its place here
            regions.append(spec if spec.index == k else dataclasses.replace(spec, index=k))
            continue
        if not text and not isinstance(spec, Image.Image):
            spec = region_spec(spec, param)
        try:
            if needs_sam(spec) and sam is not None and image is not None:
                regions.append(sam.region(spec, k, image))
            elif needs_sam(spec) and not text:
                raise require_sam(f"region {k + 1}", "this REGION")   # its param names where it is
            else:
                regions.append(parse_region(spec, k, image_size))   # a text spec without SAM: refused naming itself
        except (ValueError, FileNotFoundError) as e:
            raise InputError(str(e), param) from None
    return regions
