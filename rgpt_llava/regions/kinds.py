"""Every kind of region, in ONE table (:data:`KINDS`): how it is written and how it is parsed.

A kind is written as a CLI spec (``box:x1,y1,x2,y2``), as a dict key (``{"box": [...]}``, in Python and, where it has a
``schema``, in the servers' REGION JSON), or both. Everything that lists or checks region forms is derived from this
table, so adding a kind is one :class:`RegionKind` here (or :func:`register_kind`) and nothing else:

* :func:`parse_region` and :func:`sam_prompt` dispatch on it; :func:`needs_sam` reads its ``needs_sam``;
* :func:`spec_help` (the "expected ..." of an unknown spec) and :func:`cli_help` (``--region``'s help);
* :func:`region_schema`: the REGION JSON schema the servers validate against (``rgpt_llava/serve/region.schema.json``
  is this, written out: ``python -m rgpt_llava.regions.kinds > rgpt_llava/serve/region.schema.json``; a test keeps
  them equal), :func:`request_kinds` and :func:`companions`.

Python callers may also pass a :class:`Region`, a list of 4 numbers (a box) or a 2-D array / tensor / PIL image (a
mask): those are Python types, not written forms, and :func:`parse_region` takes them as the box and mask kinds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from rgpt_llava.regions.prompts import (SCRIBBLE_POINTS, SamPrompt, points_from_dict, points_from_text,
                                        require_sam, scribble_prompt, snapped_box_prompt)
from rgpt_llava.regions.rasterize import (as_numbers, box_region, flat_numbers, mask_region, parse_numbers,
                                          polygon_region, region_name, rle_region)
from rgpt_llava.regions.region import Region, describe_spec, is_pil_image

__all__ = ["KINDS", "ParseContext", "RegionKind", "cli_help", "companions", "needs_sam", "parse_region",
           "region_schema", "register_kind", "request_kind", "request_kinds", "sam_prompt", "spec_help",
           "unregister_kind"]


@dataclass(frozen=True)
class ParseContext:
    """What a kind's parser knows besides the spec: which region it is (``index``, 0-based), the image's
    ``(width, height)``, the spec as error messages quote it (``source``), and how scribbles become clicks."""
    index: int
    image_size: Tuple[int, int]
    source: str
    scribble_count: int = SCRIBBLE_POINTS
    seed: int = 0

    @property
    def name(self) -> str:
        """``"region 2 (box:1,2,3,4)"``: how error messages name the region being parsed."""
        return region_name(self.index, self.source)


Parsed = Union[Region, SamPrompt]


# eq=False: kinds compare (and hash, for caches keyed on them) by identity; their schemas are unhashable dicts.
@dataclass(frozen=True, eq=False)
class RegionKind:
    """One kind of region. Its parsers return a :class:`Region`, or for ``needs_sam`` kinds the :class:`SamPrompt`
    that :class:`rgpt_llava.sam.SamPrompter` turns into SAM's mask (a region prompt is refused without SAM)."""
    name: str                                   # the CLI prefix: "box" in box:x1,y1,x2,y2
    help: str                                   # one line, for --region's help
    cli: Optional[str] = None                   # the CLI syntax, e.g. "box:x1,y1,x2,y2"; None: no CLI form
    key: Optional[str] = None                   # the dict key that carries it: {"box": ...}; None: no dict form
    flag: Optional[str] = None                  # a companion that must be true too: {"box": ..., "snap": true}
    # A dict holding several kinds' keys is the highest-ranked one: a COCO annotation means its segmentation, not
    # its bbox, and a box with "snap": true is a prompt for SAM.
    rank: int = 0
    from_text: Optional[Callable[[str, ParseContext], Parsed]] = None   # the text after "name:"
    from_dict: Optional[Callable[[dict, ParseContext], Parsed]] = None  # the whole dict
    needs_sam: bool = False
    # REGION JSON (the servers): the JSON schema of a whole REGION of this kind; None: not accepted from clients.
    # Its properties other than ``key`` are the companions a REGION may carry beside the key.
    schema: Optional[dict] = None
    schema_defs: Mapping[str, dict] = field(default_factory=dict)    # further $defs its schema refers to
    data_url: bool = False                      # the REGION's value is an image data URL, decoded before parsing

    def selects(self, spec: dict) -> bool:
        return self.key is not None and self.key in spec and (self.flag is None or spec.get(self.flag) is True)


# ----------------------------------------------------------------------------------------------------------------------
# Parsers: spec -> Region, through the builders of rgpt_llava.regions.rasterize
# ----------------------------------------------------------------------------------------------------------------------
def _path(body: str, at: ParseContext, kind: str, what: str = "a file path") -> str:
    if not body:
        raise ValueError(f"{at.name}: '{kind}:' needs {what}")
    return body


def _file_or_value(build: Callable[..., Region], kind: str) -> dict:
    """The parsers of a kind written ``kind:PATH`` or ``{kind: value}``: ``build(path or value, index, image_size,
    source)`` takes either."""
    def from_text(body: str, at: ParseContext) -> Region:
        return build(_path(body, at, kind), at.index, at.image_size, at.source)

    def from_dict(spec: dict, at: ParseContext) -> Region:
        return build(spec[kind], at.index, at.image_size, at.source)
    return {"from_text": from_text, "from_dict": from_dict}


def _box_text(body: str, at: ParseContext) -> Region:
    return box_region(parse_numbers(body, at.name, "box"), at.index, at.image_size, at.source)


def _box_dict(spec: dict, at: ParseContext) -> Region:
    box = spec["box"]
    if isinstance(box, str):
        return _box_text(box, at)
    return box_region(as_numbers(flat_numbers(box), at.name, "box"), at.index, at.image_size, at.source)


def _bbox_dict(spec: dict, at: ParseContext) -> Region:
    xywh = as_numbers(flat_numbers(spec["bbox"]), at.name, "bbox")
    if len(xywh) != 4:
        raise ValueError(f"{at.name}: a COCO bbox needs 4 numbers x,y,w,h, got {len(xywh)}")
    x, y, w, h = xywh
    if w <= 0 or h <= 0:
        raise ValueError(f"{at.name}: COCO bbox [x, y, w, h] needs w > 0 and h > 0, got w={w:g}, h={h:g}")
    return box_region((x, y, x + w, y + h), at.index, at.image_size, at.source)


def _segmentation_dict(spec: dict, at: ParseContext) -> Region:
    seg = spec["segmentation"]
    if isinstance(seg, dict):
        return rle_region(seg, at.index, at.image_size, at.source)
    return polygon_region(seg, at.index, at.image_size, at.source)


def _polygon_text(body: str, at: ParseContext) -> Region:
    polys = [parse_numbers(part, at.name, "polygon") for part in body.split(";") if part.strip()]
    return polygon_region(polys, at.index, at.image_size, at.source)


def _scribble_text(body: str, at: ParseContext) -> SamPrompt:
    return scribble_prompt(_path(body, at, "scribble"), at)


def _snap_text(body: str, at: ParseContext) -> SamPrompt:
    return snapped_box_prompt({"box": _path(body, at, "snap", "x1,y1,x2,y2"), "snap": True}, at)


_NUMBER = {"$ref": "#/$defs/number"}
_DATA_URL = {"type": "string", "pattern": "^data:image/[A-Za-z0-9.+-]+;base64,"}


def _object_schema(description: str, properties: dict, required: str) -> dict:
    return {"description": description, "type": "object", "properties": properties, "required": [required],
            "additionalProperties": False}


# ----------------------------------------------------------------------------------------------------------------------
# The table. Its order is the order of every listing (help, REGION's "exactly one of", the schema's oneOf).
# ----------------------------------------------------------------------------------------------------------------------
KINDS: List[RegionKind] = [
    RegionKind(
        "box", "a box's corners in original pixels; up to 1 px outside the image is clipped",
        cli="box:x1,y1,x2,y2", key="box", rank=1, from_text=_box_text, from_dict=_box_dict,
        schema=_object_schema(
            "A box [x1, y1, x2, y2]: pixel edges, x2 > x1, y2 > y1; up to 1 px outside the image is clipped. With "
            "\"snap\": true, SAM refines it to the object's mask (the server needs --sam-model).",
            {"box": {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4},
             "snap": {"type": "boolean"}}, "box")),
    RegionKind(
        "bbox", "a COCO box [x, y, w, h]", key="bbox", rank=0, from_dict=_bbox_dict),
    RegionKind(
        "segmentation", "a COCO annotation's segmentation: polygons or an RLE", key="segmentation", rank=5,
        from_dict=_segmentation_dict),
    RegionKind(
        "polygon", "a COCO polygon; ';' separates the parts of one region",
        cli="polygon:x1,y1,x2,y2,...", key="polygon", rank=2, from_text=_polygon_text,
        from_dict=lambda spec, at: polygon_region(spec["polygon"], at.index, at.image_size, at.source),
        schema=_object_schema(
            "A COCO polygon [x1, y1, x2, y2, ...] (at least 3 points), or a list of such polygons (one region).",
            {"polygon": {"oneOf": [{"$ref": "#/$defs/ring"},
                                   {"type": "array", "items": {"$ref": "#/$defs/ring"}, "minItems": 1,
                                    "maxItems": 256}]}}, "polygon"),
        schema_defs={"ring": {"type": "array", "items": _NUMBER, "minItems": 6, "maxItems": 20000}}),
    RegionKind(
        "rle", "a JSON file holding a COCO RLE of the image's size, or an annotation with one",
        cli="rle:PATH.json", key="rle", rank=3,
        **_file_or_value(rle_region, "rle"),
        schema=_object_schema(
            "A COCO run-length encoding of a mask of the image's size: compressed (string counts) or not "
            "(integers).",
            {"rle": {"type": "object",
                     "properties": {
                         "size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                                  "maxItems": 2},
                         "counts": {"oneOf": [{"type": "string", "minLength": 1},
                                              {"type": "array", "items": {"type": "integer", "minimum": 0},
                                               "minItems": 1}]}},
                     "required": ["size", "counts"], "additionalProperties": False}}, "rle")),
    RegionKind(
        "mask", "a mask file of the image's size: nonzero pixels are inside",
        cli="mask:PATH.png", key="mask", rank=4,
        **_file_or_value(mask_region, "mask"),
        schema=_object_schema(
            "A mask image of the image's size as a data URL (PNG recommended): nonzero pixels are inside.",
            {"mask": _DATA_URL}, "mask"),
        data_url=True),
    RegionKind(
        "point", "clicks; ';' between clicks, label 1 on the object, the default, or 0 not on it",
        cli="point:x,y[,label]", key="points", rank=12, from_text=points_from_text, from_dict=points_from_dict,
        needs_sam=True,
        schema=_object_schema(
            "Clicks for SAM (the server needs --sam-model): [x, y] in original pixels; labels 1 (on the object, the "
            "default) or 0 (not on it), one per point, at least one 1.",
            {"points": {"type": "array", "minItems": 1, "maxItems": 64,
                        "items": {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}},
             "labels": {"type": "array", "items": {"enum": [0, 1]}, "minItems": 1, "maxItems": 64}}, "points")),
    RegionKind(
        "scribble", "a mask file of brush strokes, a few of whose pixels SAM gets as clicks",
        cli="scribble:PATH.png", key="scribble", rank=11, from_text=_scribble_text,
        from_dict=lambda spec, at: scribble_prompt(spec["scribble"], at), needs_sam=True,
        schema=_object_schema(
            "Brush strokes for SAM (the server needs --sam-model): a mask image of the image's size as a data URL, "
            "nonzero pixels are strokes; 8 stroke pixels drawn with a fixed seed become positive clicks.",
            {"scribble": _DATA_URL}, "scribble"),
        data_url=True),
    # REGION JSON writes it as a box's "snap" companion (the box kind's schema), so it has no schema of its own.
    RegionKind(
        "snap", "a box that SAM refines to the object's outline",
        cli="snap:x1,y1,x2,y2", key="box", flag="snap", rank=10, from_text=_snap_text, from_dict=snapped_box_prompt,
        needs_sam=True),
]


def register_kind(kind: RegionKind) -> RegionKind:
    """Add ``kind`` to :data:`KINDS` (at the end): every parser, listing and schema derived from the table takes it."""
    taken = [k.name for k in KINDS if k.name == kind.name]
    taken += [k.name for k in KINDS if kind.schema is not None and k.schema is not None and k.key == kind.key]
    if taken:
        raise ValueError(f"region kind {kind.name!r} clashes with the kind {taken[0]!r} already registered")
    if kind.cli is not None and kind.cli.partition(":")[0] != kind.name:
        raise ValueError(f"region kind {kind.name!r}: its CLI syntax {kind.cli!r} must start with '{kind.name}:'")
    KINDS.append(kind)
    return kind


def unregister_kind(name: str) -> None:
    KINDS[:] = [k for k in KINDS if k.name != name]


# ----------------------------------------------------------------------------------------------------------------------
# Lookups
# ----------------------------------------------------------------------------------------------------------------------
def _cli_prefix(spec: str) -> str:
    return spec.strip().partition(":")[0].strip().lower()


def cli_kind(prefix: str) -> Optional[RegionKind]:
    return next((k for k in KINDS if k.cli is not None and k.name == prefix), None)


def dict_kind(spec: dict) -> Optional[RegionKind]:
    chosen = [k for k in KINDS if k.selects(spec)]
    return max(chosen, key=lambda k: k.rank) if chosen else None


def request_kinds() -> Tuple[str, ...]:
    """The keys a REGION (the servers' JSON) may carry: exactly one of them."""
    return tuple(k.key for k in KINDS if k.schema is not None)


def request_kind(key: str) -> RegionKind:
    return next(k for k in KINDS if k.schema is not None and k.key == key)


def companions() -> Dict[str, str]:
    """REGION fields allowed beside a kind's key -> that key (``{"labels": "points", "snap": "box"}``)."""
    return {p: k.key for k in KINDS if k.schema is not None for p in k.schema["properties"] if p != k.key}


def needs_sam(spec: Any) -> bool:
    """Whether a region spec is a prompt for SAM rather than a region."""
    if isinstance(spec, str):
        return any(k.needs_sam and k.cli is not None and k.name == _cli_prefix(spec) for k in KINDS)
    if isinstance(spec, dict):
        kind = dict_kind(spec)
        return kind is not None and kind.needs_sam
    return False


# ----------------------------------------------------------------------------------------------------------------------
# Derived texts and schema
# ----------------------------------------------------------------------------------------------------------------------
def spec_help() -> str:
    """The "expected ..." that follows an unknown region spec."""
    plain = [k for k in KINDS if not k.needs_sam]
    sam = ", ".join(f"'{k.cli}'" for k in KINDS if k.needs_sam and k.cli)
    return ("expected " + ", ".join(f"'{k.cli}'" for k in plain if k.cli)
            + ", a dict with " + " / ".join(f"'{k.key}'" for k in plain if k.key)
            + ", a list of 4 box numbers, a 2-D mask (numpy array, torch tensor, PIL image)"
            + (f", or, with SAM, {sam}" if sam else ""))


def cli_help() -> str:
    """``--region SPEC``'s help: every kind with a CLI form, with its one-line help."""
    def listing(kinds):
        return "; ".join(f"{k.cli} ({k.help})" for k in kinds if k.cli)
    return ("repeatable; one of " + listing(k for k in KINDS if not k.needs_sam) + "; with --sam-model: "
            + listing(k for k in KINDS if k.needs_sam))


def region_schema() -> dict:
    """The JSON schema of one REGION, as the servers validate it."""
    defs: Dict[str, dict] = {"number": {"type": "number"}}
    for k in KINDS:
        if k.schema is not None:
            defs[k.key] = k.schema
            defs.update(k.schema_defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "rgpt_llava/serve/region.schema.json",
        "title": "REGION",
        "description": "One region of an image, in the image's original pixels (as a viewer shows it: EXIF "
                       "orientation applied). Exactly one of the forms below; docs/SERVING.md.",
        "oneOf": [{"$ref": f"#/$defs/{key}"} for key in request_kinds()],
        "$defs": defs,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------------
def parse_region(spec: Any, index: int, image_size: tuple) -> Region:
    """Parse one user region against an image of ``image_size = (width, height)`` (PIL's ``.size``).

    Accepted ``spec`` forms: a CLI spec ``'kind:...'`` or a dict ``{key: ...}`` of a kind in :data:`KINDS` (the
    table is the list: :func:`spec_help` writes it out; when a dict holds several kinds' keys the highest ``rank``
    wins, so a COCO annotation means its segmentation); a list / tuple / 1-D array of 4 numbers: a box
    ``[x1,y1,x2,y2]``; a 2-D numpy array, torch tensor or PIL image: a mask; a :class:`Region` is returned unchanged.

    Raises ``ValueError`` (``FileNotFoundError`` for missing files) naming the region and the problem; a prompt for
    SAM is :class:`rgpt_llava.regions.prompts.SamRequired` (``process_regions(..., image=, sam=)`` resolves them)."""
    if isinstance(spec, Region):
        return spec
    width, height = int(image_size[0]), int(image_size[1])
    at = ParseContext(index, (width, height), describe_spec(spec))
    name = at.name
    if needs_sam(spec):
        raise require_sam(name)

    if isinstance(spec, str):
        prefix, sep, body = spec.strip().partition(":")
        prefix = prefix.strip().lower()
        kind = cli_kind(prefix)
        if not sep or kind is None:
            raise ValueError(f"{name}: unknown region kind {prefix!r}; {spec_help()}")
        return kind.from_text(body.strip(), at)

    if isinstance(spec, dict):
        kind = dict_kind(spec)
        if kind is None:
            raise ValueError(f"{name}: unknown region dict keys {sorted(map(str, spec))}; {spec_help()}")
        return kind.from_dict(spec, at)

    if is_pil_image(spec):
        return mask_region(spec, index, at.image_size, at.source)
    if isinstance(spec, (np.ndarray, torch.Tensor)):
        if spec.ndim == 1:
            return box_region(as_numbers(spec.tolist(), name, "box"), index, at.image_size, at.source)
        return mask_region(spec, index, at.image_size, at.source)
    if isinstance(spec, (list, tuple)):
        if spec and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                        for v in spec):
            if len(spec) != 4:
                raise ValueError(f"{name}: a box needs 4 coordinates x1,y1,x2,y2, got {len(spec)} (use "
                                 f"'polygon:...' or {{'segmentation': [[...]]}} for polygons)")
            return box_region(spec, index, at.image_size, at.source)
    raise ValueError(f"{name}: unsupported region spec of type {type(spec).__name__}; {spec_help()}")


def sam_prompt(spec: Any, index: int, image_size, scribble_count: int = SCRIBBLE_POINTS,
               seed: int = 0) -> SamPrompt:
    """A checked :class:`SamPrompt` from a region spec for which :func:`needs_sam` holds."""
    at = ParseContext(index, tuple(image_size), describe_spec(spec), scribble_count, seed)
    if isinstance(spec, str):
        prefix, _, body = spec.strip().partition(":")
        return cli_kind(prefix.strip().lower()).from_text(body.strip(), at)
    return dict_kind(spec).from_dict(spec, at)


if __name__ == "__main__":   # writes rgpt_llava/serve/region.schema.json (see the module docstring)
    print(json.dumps(region_schema(), indent=2))
