"""The web page's state and logic, without gradio: the photo and its regions (:class:`Board`), a conversation on the
page as a chat request (:func:`build_request`), and what every control does (:class:`Page`).

The layout -- gradio's Blocks, which control triggers which handler -- is :mod:`rgpt_llava.serve.gradio_web_server`.
Handlers here return plain values; where a control is to stay as it is they return :data:`SKIP`, and the layout
turns that (and :class:`Shown`, :class:`Choices`, :class:`PageError`) into gradio's terms. The page asks through a
backend (:mod:`rgpt_llava.serve.backends`), so it checks and answers exactly as the API does.
"""
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from rgpt_llava.mm_utils import region_references
from rgpt_llava.regions.rasterize import full_mask
from rgpt_llava.sam import sam_prompt
from rgpt_llava.serve.backends import Backend, collect
from rgpt_llava.serve.chat import (PLACEHOLDER, APIError, ChatRequest, Message, Part, bad_request,
                                   describe_request)
from rgpt_llava.serve.describe import draw_outlines, proposals
from rgpt_llava.serve.engine import Sampling, iterate_on, run_on
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError, check_region_json, load_image_file, parse_regions
from rgpt_llava.serve.palette import HEX, hex_colour, rgb, rgb_colour

# "Region [2]" (the paper's REC answers), "region 2", "<region2>": the region an answer names
ANSWER_REGION = re.compile(r"(?:\bregion\s*\[?\s*(\d+)\s*\]?|<region(\d+)>)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------------
# the board: the photo and its regions, numbered in the order they were drawn
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Board:
    photo: Optional[Image.Image] = None
    # {"kind": box|mask|click|json, "key", "spec": REGION JSON or a painted PIL mask, and "made": the Region SAM made
    # of it (a snapped box, a scribble, clicks) -- then that region is what is shown and asked about}
    regions: List[dict] = field(default_factory=list)
    highlight: List[int] = field(default_factory=list)  # region numbers an answer named

    def set_photo(self, image: Image.Image) -> None:
        """A new photo: the regions drawn on the last one go."""
        self.photo, self.regions, self.highlight = image.convert("RGB"), [], []

    def sync(self, kind: str, current: dict) -> None:
        """``current``: key -> spec for the regions of one kind now on the page. Kept regions keep their numbers,
        gone ones are dropped (later ones move up), new ones are numbered after the last."""
        kept = [r for r in self.regions if r["kind"] != kind or r["key"] in current]
        known = {r["key"] for r in kept if r["kind"] == kind}
        for r in kept:
            if r["kind"] == kind and not _same(r["spec"], current[r["key"]]):
                r["spec"] = current[r["key"]]
                r.pop("made", None)
        kept += [{"kind": kind, "key": k, "spec": s} for k, s in current.items() if k not in known]
        self.regions = kept

    def sync_boxes(self, drawn: Sequence[list]) -> None:
        """``drawn``: the annotator's boxes as [x1, y1, x2, y2], in its order. A box drawn where a box region is
        keeps that region; of the rest, as many as box regions are left over are those regions edited (a move or a
        resize, in order); more boxes than that are new regions, numbered after the last; box regions left without a
        box are deleted (later regions move up). The page writes nothing back into the annotator: a reply written
        there lands after the user has dragged on, and would put the box back to where it was."""
        old = [r for r in self.regions if r["kind"] == "box"]
        unmatched_old, unmatched_new = list(old), []
        for corners in drawn:
            same = next((r for r in unmatched_old if r["spec"]["box"] == list(corners)), None)
            if same is not None:
                unmatched_old.remove(same)
            else:
                unmatched_new.append(list(corners))
        for r, corners in zip(unmatched_old, unmatched_new):
            r["spec"] = {"box": corners}
            r.pop("made", None)
        gone = unmatched_old[len(unmatched_new):]
        self.regions = [r for r in self.regions if not any(r is g for g in gone)]
        self.regions += [{"kind": "box", "key": object(), "spec": {"box": corners}}
                         for corners in unmatched_new[len(unmatched_old):]]

    def drop_made(self, kind: str) -> None:
        """SAM's masks of the regions of ``kind`` go (their drawing is asked about again)."""
        for r in self.regions:
            if r["kind"] == kind:
                r.pop("made", None)

    def mask_of(self, region: dict) -> Optional[np.ndarray]:
        """The region's pixels as a bool mask of the photo, for showing it: SAM's mask, or the painted one; None for
        a box or REGION JSON as given."""
        if region.get("made") is not None:
            return full_mask(region["made"], *self.photo.size)
        if isinstance(region["spec"], Image.Image):
            return np.asarray(region["spec"]) > 0
        return None

    def preview(self) -> Optional[Image.Image]:
        """The photo with every region filled lightly in its colour and numbered; named ones stand out."""
        if self.photo is None:
            return None
        out = self.photo.convert("RGBA")
        layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        width = max(2, round(max(out.size) / 250))
        for n, r in enumerate(self.regions, 1):
            fill = rgb_colour(n)
            alpha = 150 if n in self.highlight else 60
            mask = self.mask_of(r)
            if mask is None and r["kind"] == "box":
                x1, y1, x2, y2 = r["spec"]["box"]
                draw.rectangle([x1, y1, x2, y2], fill=fill + (alpha,), outline=fill + (255,),
                               width=width * (3 if n in self.highlight else 1))
                anchor = (x1, y1)
            else:
                layer.paste(Image.new("RGBA", out.size, fill + (alpha,)), (0, 0),
                            Image.fromarray(mask.astype(np.uint8) * 255))
                ys, xs = np.nonzero(mask)
                anchor = (int(xs.min()), int(ys.min())) if xs.size else (0, 0)
            tag = f" {n} "
            draw.rectangle([anchor[0], anchor[1], anchor[0] + 8 * len(tag), anchor[1] + 14], fill=fill + (255,))
            draw.text((anchor[0] + 2, anchor[1]), tag, fill=(255, 255, 255, 255))
        return Image.alpha_composite(out, layer).convert("RGB")

    def as_json(self) -> str:
        """The regions as a JSON list of REGION (masks as COCO RLE): what an API request would carry."""
        from pycocotools import mask as mask_utils
        out = []
        for r in self.regions:
            mask = self.mask_of(r)
            if mask is not None:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                out.append({"rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
            else:
                out.append(r["spec"])
        return json.dumps(out)

    def chips(self) -> str:
        if not self.regions:
            return "<i>No regions yet: drag boxes, or paint masks (one layer per region).</i>"
        out = []
        for n, r in enumerate(self.regions, 1):
            made = r.get("made")
            mask = self.mask_of(r)
            area = f"{int(mask.sum())} px" if mask is not None else ""
            if r["kind"] == "box":
                what = "box [" + ", ".join(f"{v:.0f}" for v in r["spec"]["box"]) + "]"
                what += f" snapped by SAM, {area}" if made is not None else ""
            elif r["kind"] == "click":
                clicks = len(r["spec"]["points"])
                what = f"SAM mask from {clicks} click{'s' if clicks > 1 else ''}, {area}"
            elif made is not None:
                what = f"SAM mask from a scribble, {area}"
            else:
                what = f"mask, {area}"
            out.append(f'<button class="rgpt-chip" style="border-color:{hex_colour(n)}" '
                       f'onclick="rgptInsert(\'&lt;region{n}&gt;\')" title="insert &lt;region{n}&gt;">'
                       f'&lt;region{n}&gt; {html.escape(what)}</button>')
        return "".join(out)


def _same(a, b) -> bool:
    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        return a.size == b.size and a.tobytes() == b.tobytes()
    return a == b


def given(region: dict) -> Any:
    """What a region on the board gives the model: the :class:`Region` SAM made of it, else what was drawn."""
    return region["made"] if region.get("made") is not None else region["spec"]


def overlay(photo: Image.Image, mask: Optional[np.ndarray], clicks: Sequence[Tuple[float, float, int]]
            ) -> Image.Image:
    """The Click tab's picture: the photo, the mask SAM makes of the clicks so far, the clicks (green on the object,
    red off it)."""
    out = photo.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    if mask is not None:
        layer.paste(Image.new("RGBA", out.size, rgb(HEX[2]) + (110,)), (0, 0),
                    Image.fromarray(mask.astype(np.uint8) * 255))
    draw = ImageDraw.Draw(layer)
    r = max(3, round(max(out.size) / 120))
    for x, y, label in clicks:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(40, 200, 60, 255) if label else (230, 30, 30, 255),
                     outline=(255, 255, 255, 255), width=max(1, r // 3))
    return Image.alpha_composite(out, layer).convert("RGB")


def drawn_boxes(value: dict) -> List[dict]:
    """The annotator's boxes that are regions: one of no area is a press not yet dragged (the annotator reports it)."""
    return [x for x in value.get("boxes") or [] if x["xmax"] > x["xmin"] and x["ymax"] > x["ymin"]]


def masks_from(value: Optional[dict], size: Tuple[int, int]) -> dict:
    """The editor's layers with paint in them, keyed by layer: nonzero alpha is inside."""
    out = {}
    for i, layer in enumerate((value or {}).get("layers") or []):
        arr = np.asarray(layer)
        if arr.ndim != 3 or arr.shape[2] != 4 or not arr[..., 3].any():
            continue
        mask = Image.fromarray(((arr[..., 3] > 0) * 255).astype(np.uint8), "L")
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        out[("layer", i)] = mask
    return out


def photo_in_editor(photo) -> dict:
    """The mask editor's value for a new photo: a background alone (no layers given), so the editor sizes its canvas
    and first layer to the photo."""
    return {"background": photo, "layers": None, "composite": None}


# ---------------------------------------------------------------------------------------------------------------------
# a conversation on the page -> a chat request
# ---------------------------------------------------------------------------------------------------------------------
def build_request(board: Board, turns: Sequence[Tuple[str, str]], model: Optional[str], sampling: Sampling
                  ) -> ChatRequest:
    """``turns``: (role, text) with the page's region numbers. The request supplies the regions the conversation
    names, numbered by first mention and attached to the turn that first mentions them (what the model reads is the
    same: a placeholder's number only selects its region), so regions drawn and never asked about are no error."""
    first_user = next(i for i, (role, _) in enumerate(turns) if role == "user")
    order, attach, rewritten = [], {}, []
    plain = 0   # <region> placeholders so far: the k-th plain one is region k, across the user's turns
    for t, (role, text) in enumerate(turns):
        if role != "user":
            rewritten.append((role, text))
            continue
        try:
            pages = [ref + plain if not match.group(1) else ref for match, ref in
                     zip(PLACEHOLDER.finditer(text), region_references(text))]
        except ValueError as e:
            raise bad_request(str(e), "question") from None
        plain += sum(1 for match in PLACEHOLDER.finditer(text) if not match.group(1))
        for page in pages:
            if page >= len(board.regions):
                raise bad_request(f"the question names region {page + 1} but {len(board.regions)} region(s) are "
                                  f"drawn", "question")
            if page not in order:
                order.append(page)
                attach[page] = t
        numbers = iter(pages)
        rewritten.append((role, PLACEHOLDER.sub(lambda m: f"<region{order.index(next(numbers)) + 1}>", text)))
    messages = []
    for t, (role, text) in enumerate(rewritten):
        parts = [Part("image", param="photo")] if t == first_user and board.photo is not None else []
        parts.append(Part("text", text, param=f"turn {t + 1}"))
        parts += [Part("region", region=given(board.regions[page]), param=f"region {page + 1}")
                  for page in order if attach[page] == t]
        messages.append(Message(role, parts, f"turn {t + 1}"))
    return ChatRequest(model, None, messages, board.photo, sampling, stream=True)


def named_regions(answer: str, count: int) -> List[int]:
    """The region numbers (1..``count``) an answer names, in order of first mention."""
    found = []
    for a, b in ANSWER_REGION.findall(answer):
        n = int(a or b)
        if 1 <= n <= count and n not in found:
            found.append(n)
    return found


def shown(history: Sequence[Tuple[str, str]]) -> List[dict]:
    """The chat as the page shows it: the chat renders HTML, where "<region2>" would be taken for a tag and dropped."""
    return [{"role": role, "content": html.escape(text)} for role, text in history]


def message_for(e: Exception) -> str:
    return e.message if isinstance(e, APIError) else str(e)


# ---------------------------------------------------------------------------------------------------------------------
# what the controls do
# ---------------------------------------------------------------------------------------------------------------------
SKIP = object()   # "leave this control as it is" (gradio's skip)


@dataclass
class Shown:
    """Show a hidden picture with this value."""
    value: Any


@dataclass
class Choices:
    """The model menu's choices and choice; ``names`` None: leave it as it is."""
    names: Optional[List[str]] = None
    value: Optional[str] = None


class PageError(ValueError):
    """What the user must do first, or a bad input to the page's API (``/ask``): shown as it is."""


class Page:
    """The page's handlers on one backend. Each takes and returns the values of the controls the layout wires to
    it, in that order."""

    def __init__(self, backend: Backend, examples: Sequence[str] = ()):
        self.backend, self.examples = backend, list(examples)
        self.executor = getattr(backend, "executor", None)
        self.sam = getattr(backend, "sam", None)
        self.models = backend.models()

    # ---- drawing -----------------------------------------------------------------------------------------------------
    def new_photo(self, image, b: Board):
        """-> board, preview, chips, boxes, history, chat, status, clicker, clicks"""
        b.set_photo(image)
        return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, [], [], "", b.photo, []

    def example(self, index: int, b: Board):
        """An example photo: :meth:`new_photo`'s outputs and the editor's value."""
        return (*self.new_photo(load_image_file(self.examples[index], "example").convert("RGB"), b),
                photo_in_editor(b.photo))

    async def with_sam(self, fn, *args):
        """A SAM call on the model's thread (SAM shares the device with the model)."""
        return await run_on(self.executor, fn, *args)

    async def snap_masks(self, b: Board, kind: str, spec_of) -> Optional[str]:
        """SAM's mask for every region of ``kind`` that has none yet; a sentence when SAM cannot make one."""
        for n, r in enumerate(b.regions, 1):
            if r["kind"] == kind and r.get("made") is None:
                try:
                    r["made"] = await self.with_sam(self.sam.region, spec_of(r), n - 1, b.photo)
                except ValueError as e:
                    return f"**Region {n}:** {html.escape(str(e))}"
        return None

    async def boxes_changed(self, value, snapping, b: Board):
        """-> board, preview, chips, status"""
        if b.photo is None or value is None:
            return b, b.preview(), b.chips(), SKIP
        b.sync_boxes([[float(x[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for x in drawn_boxes(value)])
        problem = None
        if not snapping:
            b.drop_made("box")
        if snapping and self.sam is not None:
            problem = await self.snap_masks(b, "box", lambda r: {**r["spec"], "snap": True})
        return b, b.preview(), b.chips(), problem or ""

    async def layers_changed(self, value, scribbles, b: Board):
        """-> board, preview, chips, status"""
        if b.photo is None or value is None:
            return b, b.preview(), b.chips(), SKIP
        b.sync("mask", masks_from(value, b.photo.size))
        if not scribbles:
            b.drop_made("mask")
        problem = None
        if scribbles and self.sam is not None:
            problem = await self.snap_masks(b, "mask", lambda r: {"scribble": r["spec"]})
        return b, b.preview(), b.chips(), problem or ""

    # ---- clicks (SAM) ------------------------------------------------------------------------------------------------
    async def clicked(self, b: Board, pending, kind, x: float, y: float):
        """A click on the Click tab's photo at (x, y). -> clicks, clicker, status"""
        if b.photo is None or self.sam is None:
            return pending, SKIP, "Upload a photo first."
        now = pending + [(float(x), float(y), 1 if kind == "on the object" else 0)]
        if not any(label for _, _, label in now):
            return now, overlay(b.photo, None, now), "Click on the object too: SAM needs one click on it."
        try:
            prompt = sam_prompt({"points": [[cx, cy] for cx, cy, _ in now], "labels": [lab for *_, lab in now]},
                                len(b.regions), b.photo.size)
            mask, _ = await self.with_sam(self.sam.mask, b.photo, prompt)
        except ValueError as e:
            return pending, SKIP, html.escape(str(e))
        return now, overlay(b.photo, mask, now), ""

    async def add_clicks(self, b: Board, pending):
        """The clicks so far as a region. -> board, clicks, clicker, preview, chips, status"""
        if b.photo is None or not pending:
            return b, pending, SKIP, b.preview(), b.chips(), "Click on the object in the photo first."
        spec = {"points": [[x, y] for x, y, _ in pending], "labels": [lab for *_, lab in pending]}
        try:
            region = await self.with_sam(self.sam.region, spec, len(b.regions), b.photo)
        except ValueError as e:
            return b, pending, SKIP, b.preview(), b.chips(), html.escape(str(e))
        b.regions.append({"kind": "click", "key": object(), "spec": spec, "made": region})
        return b, [], b.photo, b.preview(), b.chips(), ""

    def clear_regions(self, b: Board):
        """-> board, preview, chips, boxes, clicks, clicker"""
        b.regions, b.highlight = [], []
        if b.photo is None:
            return b, b.preview(), b.chips(), SKIP, [], SKIP
        return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, [], b.photo

    # ---- describe everything -----------------------------------------------------------------------------------------
    async def describe(self, b: Board, prompt, limit, tokens, side, iou, stable, model_name):
        """One answer per region drawn, or per region SAM proposes. -> described, described list, status"""
        if b.photo is None:
            return SKIP, "", "Upload a photo first."
        try:
            regions = await self._regions_to_describe(b, int(limit), int(side), float(iou), float(stable))
            req = describe_request(b.photo, regions, prompt, int(tokens), model_name)
            events, _ = await run_on(self.executor, self.backend.start, req)
            texts, _ = await collect(self.executor, events, len(regions))
        except PageError as e:
            return SKIP, "", str(e)
        except (APIError, InputError) as e:
            return SKIP, "", f"**Not described:** {html.escape(message_for(e))}"
        texts = [t.strip() for t in texts]
        listing = "<ol>" + "".join(f'<li style="color:{hex_colour(k + 1)}"><span style="color:initial">'
                                  f'{html.escape(t)}</span></li>' for k, t in enumerate(texts)) + "</ol>"
        return Shown(draw_outlines(b.photo, regions, texts)), listing, ""

    async def _regions_to_describe(self, b: Board, limit: int, side: int, iou: float, stable: float):
        """The regions drawn (at most ``limit``), else SAM's proposals; a :class:`PageError` saying what to do when
        there are none, an :class:`InputError` for a region that cannot be used."""
        if b.regions:
            items = [(given(r), f"region {n}") for n, r in enumerate(b.regions, 1)][:limit]
            return await self.with_sam(parse_regions, items, b.photo.size, MAX_REGIONS, b.photo, self.sam)
        if self.sam is None:
            raise PageError("Draw regions first (this page has no SAM to propose them).")
        regions = await self.with_sam(lambda: proposals(self.sam, b.photo, limit, points_per_side=side,
                                                        pred_iou_thresh=iou, stability_score_thresh=stable))
        if not regions:
            raise PageError("SAM proposed no region above its thresholds: lower them, or draw.")
        return regions

    # ---- chatting ----------------------------------------------------------------------------------------------------
    async def stream_answer(self, hist, b: Board, model_name, sampling: Sampling):
        """The answer's text so far, after each step; APIError for anything the backend refuses or fails."""
        req = build_request(b, hist, model_name, sampling)
        events, _ = await run_on(self.executor, self.backend.start, req)
        text = ""
        async for evs in iterate_on(self.executor, events):
            for ev in evs:
                if ev.error:
                    raise APIError(502, ev.error)
                text += ev.text
            yield text

    async def answer(self, hist, b: Board, model_name, t, p, n, keep_question: bool):
        """``hist`` ends with the user's turn. On an error the page says what went wrong in a sentence; the turn
        stays in the chat (``keep_question``, to regenerate) or goes back to the question box.
        -> history, chat, status, preview"""
        sampling = Sampling(temperature=float(t), top_p=float(p), max_new_tokens=int(n))
        before = hist if keep_question else hist[:-1]
        text, started = "", False
        try:
            async for text in self.stream_answer(hist, b, model_name, sampling):
                started = True
                now = hist + [("assistant", text)]
                yield now, shown(now), "", SKIP
        except APIError as e:
            what = "The model failed" if started else "Not sent"
            yield before, shown(before), f"**{what}:** {html.escape(message_for(e))}", SKIP
            return
        b.highlight = named_regions(text, len(b.regions))
        now = hist + [("assistant", text)]
        yield now, shown(now), "", b.preview()

    async def send(self, q, hist, b: Board, model_name, t, p, n):
        """-> history, chat, status, preview, question"""
        if not q or not q.strip():
            yield hist, shown(hist), "Type a question first.", SKIP, q
            return
        if b.photo is None and PLACEHOLDER.search(q):
            yield hist, shown(hist), "Upload a photo and draw regions first.", SKIP, q
            return
        asked = hist + [("user", q.strip())]
        async for h, c, s, pv in self.answer(asked, b, model_name, t, p, n, keep_question=False):
            yield h, c, s, pv, (q if len(h) < len(asked) else "")   # a refused question goes back to the box

    async def regenerate(self, hist, b: Board, model_name, t, p, n):
        """-> history, chat, status, preview"""
        if len(hist) < 2 or hist[-1][0] != "assistant":
            yield hist, shown(hist), "Nothing to regenerate yet.", SKIP
            return
        async for out in self.answer(hist[:-1], b, model_name, t, p, n, keep_question=True):
            yield out

    def clear_chat(self, b: Board):
        """-> history, chat, status, preview"""
        b.highlight = []
        return [], [], "", b.preview()

    # ---- gradio_client: one question about a photo's regions -------------------------------------------------------
    async def ask(self, photo, regions_json, q, t=0.2, p=0.7, n=256, model_name=None):
        """photo: an image; regions_json: a JSON list of REGION (docs/SERVING.md); q: the question, naming
        regions as <regionN>. Returns the answer; a bad input is an error naming it."""
        if photo is None:
            raise PageError("photo: an image is required")
        try:
            specs = json.loads(regions_json or "[]")
            if not isinstance(specs, list):
                raise ValueError("expected a JSON list of REGION")
            for k, spec in enumerate(specs):
                check_region_json(spec, f"regions[{k}]")
        except (ValueError, InputError) as e:
            raise PageError(f"regions: {e}") from None
        b = Board()
        b.set_photo(photo)
        b.regions = [{"kind": "json", "key": k, "spec": s} for k, s in enumerate(specs)]
        model_name = model_name or (self.models[0] if self.models else None)
        sampling = Sampling(temperature=float(t), top_p=float(p), max_new_tokens=int(n))
        text = ""
        try:
            async for text in self.stream_answer([("user", q or "")], b, model_name, sampling):
                pass
        except APIError as e:
            raise PageError(message_for(e)) from None
        return text

    def refresh_models(self, current):
        """LLaVA's page asks the controller for its models at every load: workers come and go. -> model, status"""
        try:
            names = self.backend.models()
        except APIError as e:
            return Choices(), f"**The models are unavailable:** {html.escape(message_for(e))}"
        return Choices(names, current if current in names else (names[0] if names else None)), ""
