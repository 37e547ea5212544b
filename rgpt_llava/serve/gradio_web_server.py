"""A web page to draw regions on a photo and chat about them: stock gradio, no fork, no frontend build.

    python -m rgpt_llava.serve.gradio_web_server --model-path CKPT [--device cpu] [--host 127.0.0.1 --port 7860]
        [--sam-model SAM_DIR]
    python -m rgpt_llava.serve.gradio_web_server --controller-url http://127.0.0.1:21001     # LLaVA's controller
        [--examples DIR_OR_IMAGE ...]

Boxes are dragged on the photo (``gradio_image_annotation``, a maintained gradio component); masks are painted with
gradio's ImageEditor (brush, eraser; one region per layer). With ``--sam-model PATH``, SAM adds three ways: clicks on
the object (and off it) in the "Click" tab, layers painted as scribbles, and boxes snapped to the object; the mask SAM
makes is what the preview shows and what the model is given. "Describe everything" answers a prompt for every region
drawn -- or, with none drawn, for each of SAM's proposals -- as a picture with numbered outlines and a list. Regions are numbered in the order they are drawn, shown
in their colours on a preview, and listed as chips: clicking one inserts ``<regionN>`` at the cursor of the question.
A later turn may add regions; every earlier turn's regions stay addressable. Answers stream in; an answer that names
a region ("Region [2]", "region 2") highlights it on the preview. Errors (an empty mask, ``<region3>`` with two
regions, a model that is down) are shown as a sentence.

The page asks through the API's backends (``rgpt_llava.serve.openai_api``: the model in this process, or the workers
behind LLaVA's controller), so it checks and answers exactly as the API does. gradio's own API exposes ``/ask`` for
``gradio_client``: a photo, a JSON list of REGION and a question in, the answer out.
"""
import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from rgpt_llava.constants import REGION_PLACEHOLDER_PATTERN
from rgpt_llava.sam import sam_prompt
from rgpt_llava.serve.describe import DEFAULT_PROMPT, full_mask, proposals, render
from rgpt_llava.serve.engine import Sampling, iterate_on, run_on
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError, check_region_json, load_image_file, parse_regions
from rgpt_llava.serve.openai_api import (APIError, ChatRequest, Message, Part, StartupError, _bad, backend_from_args,
                                         check_listen_address, describe_request)

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]
_PLACEHOLDER = re.compile(REGION_PLACEHOLDER_PATTERN)
# "Region [2]" (the paper's REC answers), "region 2", "<region2>": the region an answer names
_NAMED = re.compile(r"(?:\bregion\s*\[?\s*(\d+)\s*\]?|<region(\d+)>)", re.IGNORECASE)

# The page's own script: remember where the cursor was in the question box, and insert a chip's <regionN> there.
HEAD = """
<script>
window.rgptCursor = null;
document.addEventListener("selectionchange", () => {
  const el = document.querySelector("#question textarea");
  if (el && document.activeElement === el) window.rgptCursor = [el.selectionStart, el.selectionEnd];
});
window.rgptInsert = (text) => {
  const el = document.querySelector("#question textarea");
  if (!el) return;
  const [a, b] = window.rgptCursor || [el.value.length, el.value.length];
  el.value = el.value.slice(0, a) + text + el.value.slice(b);
  el.dispatchEvent(new Event("input", {bubbles: true}));
  el.focus();
  el.setSelectionRange(a + text.length, a + text.length);
  window.rgptCursor = [a + text.length, a + text.length];
};
</script>
"""
CSS = """
.rgpt-chip {border: 2px solid; border-radius: 14px; padding: 2px 10px; margin: 2px; cursor: pointer;
            background: white; font-family: monospace;}
#status {min-height: 1.5em;}
"""


def colour(number: int) -> str:
    return COLOURS[(number - 1) % len(COLOURS)]


def rgb(hex_colour: str) -> Tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


# ---------------------------------------------------------------------------------------------------------------------
# the board: the photo and its regions, numbered in the order they were drawn
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Board:
    photo: Optional[Image.Image] = None
    # {"kind": box|mask|click|json, "key", "spec": REGION JSON or a painted PIL mask, and "mask": the PIL mask SAM
    # made of it (a snapped box, a scribble, clicks) -- then that mask is what is shown and sent}
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
                r.pop("mask", None)
        kept += [{"kind": kind, "key": k, "spec": s} for k, s in current.items() if k not in known]
        self.regions = kept

    def sync_boxes(self, drawn: Sequence[list]) -> None:
        """``drawn``: the annotator's boxes as [x1, y1, x2, y2], in its order. A box drawn where a box region is
        keeps that region; of the rest, as many as box regions are left over are those regions edited (a move or a
        resize, in order); more boxes than that are new regions, numbered after the last; box regions left without a
        box are deleted (later regions move up). The page writes nothing back into the annotator: a reply written
        there lands after the user has dragged on, and would put the box back to where it was."""
        old = [r for r in self.regions if r["kind"] == "box"]
        unmatched_old, unmatched_new, gone = list(old), [], []
        for corners in drawn:
            same = next((r for r in unmatched_old if r["spec"]["box"] == list(corners)), None)
            if same is not None:
                unmatched_old.remove(same)
            else:
                unmatched_new.append(list(corners))
        for r, corners in zip(unmatched_old, unmatched_new):
            r["spec"] = {"box": corners}
            r.pop("mask", None)
        gone = unmatched_old[len(unmatched_new):]
        self.regions = [r for r in self.regions if not any(r is g for g in gone)]
        self.regions += [{"kind": "box", "key": object(), "spec": {"box": corners}}
                         for corners in unmatched_new[len(unmatched_old):]]

    def preview(self) -> Optional[Image.Image]:
        """The photo with every region filled lightly in its colour and numbered; named ones stand out."""
        if self.photo is None:
            return None
        out = self.photo.convert("RGBA")
        layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        width = max(2, round(max(out.size) / 250))
        for n, r in enumerate(self.regions, 1):
            fill = rgb(colour(n))
            alpha = 150 if n in self.highlight else 60
            if r.get("mask") is None and r["kind"] == "box":
                x1, y1, x2, y2 = r["spec"]["box"]
                draw.rectangle([x1, y1, x2, y2], fill=fill + (alpha,), outline=fill + (255,),
                               width=width * (3 if n in self.highlight else 1))
                anchor = (x1, y1)
            else:
                mask = sent(r)
                layer.paste(Image.new("RGBA", out.size, fill + (alpha,)), (0, 0), mask)
                ys, xs = np.nonzero(np.asarray(mask))
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
            if isinstance(sent(r), Image.Image):
                rle = mask_utils.encode(np.asfortranarray(np.asarray(sent(r)) > 0).astype(np.uint8))
                out.append({"rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
            else:
                out.append(r["spec"])
        return json.dumps(out)

    def chips(self) -> str:
        if not self.regions:
            return "<i>No regions yet: drag boxes, or paint masks (one layer per region).</i>"
        out = []
        for n, r in enumerate(self.regions, 1):
            made = r.get("mask")
            area = f"{int((np.asarray(sent(r)) > 0).sum())} px" if isinstance(sent(r), Image.Image) else ""
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
            out.append(f'<button class="rgpt-chip" style="border-color:{colour(n)}" '
                       f'onclick="rgptInsert(\'&lt;region{n}&gt;\')" title="insert &lt;region{n}&gt;">'
                       f'&lt;region{n}&gt; {html.escape(what)}</button>')
        return "".join(out)


def _full(region, size: Tuple[int, int]) -> Image.Image:
    """A parsed region as the page keeps masks: a PIL "L" image of the photo's size, 255 inside."""
    return Image.fromarray(full_mask(region, *size).astype(np.uint8) * 255)


def _same(a, b) -> bool:
    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        return a.size == b.size and a.tobytes() == b.tobytes()
    return a == b


def sent(region: dict):
    """What a region on the board gives the model: the mask SAM made of it, else what was drawn."""
    return region["mask"] if region.get("mask") is not None else region["spec"]


def overlay(photo: Image.Image, mask: Optional[np.ndarray], clicks: Sequence[Tuple[float, float, int]]
            ) -> Image.Image:
    """The Click tab's picture: the photo, the mask SAM makes of the clicks so far, the clicks (green on the object,
    red off it)."""
    out = photo.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    if mask is not None:
        layer.paste(Image.new("RGBA", out.size, rgb(COLOURS[2]) + (110,)), (0, 0),
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


# ---------------------------------------------------------------------------------------------------------------------
# a conversation on the page -> a request of the API
# ---------------------------------------------------------------------------------------------------------------------
def build_request(board: Board, turns: Sequence[Tuple[str, str]], model: Optional[str], sampling: Sampling
                  ) -> ChatRequest:
    """``turns``: (role, text) with the page's region numbers. The request supplies the regions the conversation
    names, numbered by first mention and attached to the turn that first mentions them (what the model reads is the
    same: a placeholder's number only selects its region), so regions drawn and never asked about are no error."""
    first_user = next(i for i, (role, _) in enumerate(turns) if role == "user")
    order, plain, rewritten = [], 0, []
    attach = {}
    for t, (role, text) in enumerate(turns):
        if role != "user":
            rewritten.append((role, text))
            continue

        def renumber(match, t=t):
            nonlocal plain
            if match.group(1):
                page = int(match.group(1)) - 1
                if page < 0:
                    raise _bad(f"{match.group(0)} is not a region: regions are numbered from 1", "question")
            else:
                page, plain = plain, plain + 1
            if page >= len(board.regions):
                raise _bad(f"the question names region {page + 1} but {len(board.regions)} region(s) are drawn",
                           "question")
            if page not in order:
                order.append(page)
                attach[page] = t
            return f"<region{order.index(page) + 1}>"
        rewritten.append((role, _PLACEHOLDER.sub(renumber, text)))
    messages = []
    for t, (role, text) in enumerate(rewritten):
        parts = [Part("image", param="photo")] if t == first_user and board.photo is not None else []
        parts.append(Part("text", text, param=f"turn {t + 1}"))
        parts += [Part("region", region=sent(board.regions[page]), param=f"region {page + 1}")
                  for page in order if attach[page] == t]
        messages.append(Message(role, parts, f"turn {t + 1}"))
    return ChatRequest(model, None, messages, board.photo, sampling, stream=True)


def named_regions(answer: str, count: int) -> List[int]:
    found = []
    for a, b in _NAMED.findall(answer):
        n = int(a or b)
        if 1 <= n <= count and n not in found:
            found.append(n)
    return found


# ---------------------------------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------------------------------
def build_demo(backend, examples: Sequence[str] = (), title: str = "RegionGPT"):
    import gradio as gr
    from gradio_image_annotation import image_annotator

    executor = getattr(backend, "executor", None)
    sam = getattr(backend, "sam", None)

    def message_for(e: Exception) -> str:
        return e.message if isinstance(e, APIError) else str(e)

    with gr.Blocks(title=title, head=HEAD, css=CSS) as demo:
        board = gr.State(Board())
        gr.Markdown(f"## {html.escape(title)}: ask about regions of a photo\nDrag **boxes** or paint **masks** "
                    "(one layer per region), then ask; click a region to insert `<regionN>` into the question.")
        with gr.Row():
            with gr.Column(scale=5):
                # The editor's tab comes first: gradio 5's ImageEditor initialises its canvas only while visible, so
                # photos enter there (its own upload, or an example loaded while its tab shows); the box annotator
                # takes them from it, which works in a hidden tab.
                with gr.Tabs(selected="photo") as tabs:
                    with gr.Tab("Photo and masks", id="photo"):
                        editor = gr.ImageEditor(type="pil", image_mode="RGBA", layers=True, interactive=True,
                                                elem_id="editor", show_label=False, format="png", transforms=(),
                                                brush=gr.Brush(colors=[COLOURS[0]], color_mode="fixed",
                                                               default_size=18),
                                                eraser=gr.Eraser(default_size=18), height=420,
                                                placeholder="Upload a photo here, then paint masks: one layer per "
                                                            "region (add layers with the layer menu)")
                        scribble = gr.Checkbox(False, visible=sam is not None, elem_id="scribble",
                                               label="the layers are scribbles: SAM turns each into a mask")
                    with gr.Tab("Boxes", id="boxes"):
                        boxes = image_annotator(label_list=["region"], label_colors=[COLOURS[0]], interactive=True,
                                                disable_edit_boxes=True, use_default_label=True, sources=[],
                                                image_type="pil", elem_id="boxes", show_label=False, height=420)
                        snap = gr.Checkbox(False, visible=sam is not None, elem_id="snap",
                                           label="snap the boxes to the objects in them (SAM)")
                    with gr.Tab("Click", id="click", visible=sam is not None):
                        clicker = gr.Image(type="pil", interactive=False, show_label=False, elem_id="clicker",
                                           height=420, show_download_button=False, show_fullscreen_button=False)
                        with gr.Row():
                            polarity = gr.Radio(["on the object", "not on it"], value="on the object",
                                                label="a click is", elem_id="polarity")
                            add_clicks = gr.Button("Add as a region", elem_id="add-clicks", size="sm")
                            reset_clicks = gr.Button("Reset the clicks", elem_id="reset-clicks", size="sm")
                preview = gr.Image(label="regions", interactive=False, elem_id="preview", height=300)
                chips = gr.HTML(Board().chips(), elem_id="chips")
                clear_regions = gr.Button("Clear regions", size="sm", elem_id="clear-regions")
                with gr.Accordion("the regions as REGION JSON (for the API)", open=False):
                    # a text box, not gr.Code: CodeMirror leaves the unseen part of a long line (an RLE) out of the
                    # page, so what a user selects and copies would not be the whole JSON
                    regions_json = gr.Textbox("[]", interactive=False, lines=3, max_lines=8, show_copy_button=True,
                                              show_label=False, elem_id="regions-json")
                with gr.Accordion("Describe everything", open=False, elem_id="describe-panel"):
                    gr.Markdown("One answer per region drawn" + (" -- or, with none drawn, per region SAM "
                                                                 "proposes." if sam is not None else "."))
                    describe_prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt (the region is <region1>)",
                                                 elem_id="describe-prompt")
                    with gr.Row():
                        describe_max = gr.Slider(1, MAX_REGIONS, value=16, step=1, label="at most this many regions",
                                                 elem_id="describe-max")
                        describe_tokens = gr.Slider(1, 256, value=32, step=1, label="max new tokens per region",
                                                    elem_id="describe-tokens")
                    with gr.Row(visible=sam is not None):
                        grid = gr.Slider(2, 64, value=32, step=1, label="SAM: points per side", elem_id="grid")
                        iou_min = gr.Slider(0.0, 1.0, value=0.88, step=0.01, label="SAM: predicted IoU at least",
                                            elem_id="iou-min")
                        stable_min = gr.Slider(0.0, 1.0, value=0.95, step=0.01, label="SAM: stability at least",
                                               elem_id="stable-min")
                    describe_go = gr.Button("Describe everything", elem_id="describe")
                    described = gr.Image(label="described", interactive=False, elem_id="described", visible=False)
                    described_list = gr.HTML("", elem_id="described-list")
                if examples:
                    gallery = gr.Gallery(value=list(examples), label="examples: click one", columns=6, height=120,
                                         allow_preview=False, elem_id="examples")
            with gr.Column(scale=6):
                models = backend.models()
                model = gr.Dropdown(models, value=models[0] if models else None, label="model", elem_id="model")
                chat = gr.Chatbot(type="messages", elem_id="chat", height=460, render_markdown=False,
                                  sanitize_html=True, allow_tags=False)
                question = gr.Textbox(placeholder="What is <region1> doing next to <region2>?", lines=2,
                                      show_label=False, elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear_chat = gr.Button("Clear chat", elem_id="clear-chat")
                status = gr.Markdown("", elem_id="status")
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.2, step=0.05, label="temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="top-p", elem_id="top-p")
                    max_tokens = gr.Slider(1, 1024, value=256, step=1, label="max new tokens", elem_id="max-tokens")
                history = gr.State([])   # (role, text) with the page's region numbers
                clicks = gr.State([])    # the Click tab's clicks so far: (x, y, label)

        # ---- drawing ---------------------------------------------------------------------------------------------
        def photo_in_editor(photo):
            # a background alone (no layers given): the editor sizes its canvas and first layer to the photo
            return {"background": photo, "layers": None, "composite": None}

        def new_photo(image, b: Board):
            b.set_photo(image)
            return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, [], [], "", b.photo, []

        photo_outputs = [board, preview, chips, boxes, history, chat, status, clicker, clicks]
        editor.upload(lambda v, b: new_photo(v["background"], b), [editor, board], photo_outputs)

        async def with_sam(fn, *args):
            """A SAM call on the model's thread (SAM shares the device with the model)."""
            return await run_on(executor, fn, *args)

        async def snap_masks(b: Board, kind: str, spec_of) -> Optional[str]:
            """SAM's mask for every region of ``kind`` that has none yet; a sentence when SAM cannot make one."""
            for n, r in enumerate(b.regions, 1):
                if r["kind"] == kind and r.get("mask") is None:
                    try:
                        region = await with_sam(sam.region, spec_of(r), n - 1, b.photo)
                    except ValueError as e:
                        return f"**Region {n}:** {html.escape(str(e))}"
                    r["mask"] = _full(region, b.photo.size)
            return None

        async def on_boxes(value, snapping, b: Board):
            if b.photo is None or value is None:
                return b, b.preview(), b.chips(), gr.skip()
            b.sync_boxes([[float(x[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for x in drawn_boxes(value)])
            problem = None
            for r in b.regions:
                if r["kind"] == "box" and not snapping:
                    r.pop("mask", None)
            if snapping and sam is not None:
                problem = await snap_masks(b, "box", lambda r: {**r["spec"], "snap": True})
            return b, b.preview(), b.chips(), problem or ""

        async def on_editor(value, scribbles, b: Board):
            if b.photo is None or value is None:
                return b, b.preview(), b.chips(), gr.skip()
            b.sync("mask", masks_from(value, b.photo.size))
            for r in b.regions:
                if r["kind"] == "mask" and not scribbles:
                    r.pop("mask", None)
            problem = None
            if scribbles and sam is not None:
                problem = await snap_masks(b, "mask", lambda r: {"scribble": r["spec"]})
            return b, b.preview(), b.chips(), problem or ""

        boxes.change(on_boxes, [boxes, snap, board], [board, preview, chips, status])
        snap.change(on_boxes, [boxes, snap, board], [board, preview, chips, status])
        editor.change(on_editor, [editor, scribble, board], [board, preview, chips, status])
        scribble.change(on_editor, [editor, scribble, board], [board, preview, chips, status])

        # ---- clicks (SAM) ----------------------------------------------------------------------------------------
        async def on_click(b: Board, pending, kind, evt: gr.SelectData):
            if b.photo is None or sam is None:
                return pending, gr.skip(), "Upload a photo first."
            x, y = (float(v) for v in evt.index)
            now = pending + [(x, y, 1 if kind == "on the object" else 0)]
            if not any(label for _, _, label in now):
                return now, overlay(b.photo, None, now), "Click on the object too: SAM needs one click on it."
            try:
                prompt = sam_prompt({"points": [[cx, cy] for cx, cy, _ in now], "labels": [lab for *_, lab in now]},
                                    len(b.regions), b.photo.size)
                mask, _ = await with_sam(sam.mask, b.photo, prompt)
            except ValueError as e:
                return pending, gr.skip(), html.escape(str(e))
            return now, overlay(b.photo, mask, now), ""

        async def on_add_clicks(b: Board, pending):
            if b.photo is None or not pending:
                return b, pending, gr.skip(), b.preview(), b.chips(), "Click on the object in the photo first."
            spec = {"points": [[x, y] for x, y, _ in pending], "labels": [lab for *_, lab in pending]}
            try:
                region = await with_sam(sam.region, spec, len(b.regions), b.photo)
            except ValueError as e:
                return b, pending, gr.skip(), b.preview(), b.chips(), html.escape(str(e))
            b.regions.append({"kind": "click", "key": object(), "spec": spec, "mask": _full(region, b.photo.size)})
            return b, [], b.photo, b.preview(), b.chips(), ""

        clicker.select(on_click, [board, clicks, polarity], [clicks, clicker, status])
        add_clicks.click(on_add_clicks, [board, clicks], [board, clicks, clicker, preview, chips, status])
        reset_clicks.click(lambda b: ([], b.photo), [board], [clicks, clicker])
        chips.change(lambda b: b.as_json(), [board], [regions_json])

        def on_clear_regions(b: Board):
            b.regions, b.highlight = [], []
            if b.photo is None:
                return b, b.preview(), b.chips(), gr.skip(), [], gr.skip()
            return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, [], b.photo

        # the editor is set while its tab shows (see above), in a step of its own: the page applies an event's
        # outputs together, and the editor may take its time
        clear_regions.click(on_clear_regions, [board], [board, preview, chips, boxes, clicks, clicker]).then(
            lambda: gr.Tabs(selected="photo"), None, tabs).then(
            lambda b: photo_in_editor(b.photo) if b.photo is not None else gr.skip(), [board], [editor])

        if examples:
            def on_example(b: Board, evt: gr.SelectData):
                return (*new_photo(load_image_file(examples[evt.index], "example").convert("RGB"), b),
                        photo_in_editor(b.photo))
            gallery.select(lambda: gr.Tabs(selected="photo"), None, tabs).then(
                on_example, [board], photo_outputs + [editor])

        # ---- describe everything ---------------------------------------------------------------------------------
        async def on_describe(b: Board, prompt, limit, tokens, side, iou, stable, model_name):
            if b.photo is None:
                return gr.skip(), "", "Upload a photo first."
            try:
                if b.regions:
                    items = [(sent(r), f"region {n}") for n, r in enumerate(b.regions, 1)][:int(limit)]
                    regions = await with_sam(parse_regions, items, b.photo.size, MAX_REGIONS, b.photo, sam)
                elif sam is not None:
                    regions = await with_sam(lambda: proposals(sam, b.photo, int(limit), points_per_side=int(side),
                                                               pred_iou_thresh=float(iou),
                                                               stability_score_thresh=float(stable)))
                    if not regions:
                        return gr.skip(), "", "SAM proposed no region above its thresholds: lower them, or draw."
                else:
                    return gr.skip(), "", "Draw regions first (this page has no SAM to propose them)."
                req = describe_request(b.photo, regions, prompt, int(tokens), model_name)
                events, _ = await run_on(executor, backend.start, req)
                texts = [""] * len(regions)
                async for evs in iterate_on(executor, events):
                    for ev in evs:
                        if ev.error:
                            raise APIError(502, ev.error)
                        texts[ev.index] += ev.text
            except (APIError, InputError) as e:
                return gr.skip(), "", f"**Not described:** {html.escape(message_for(e))}"
            texts = [t.strip() for t in texts]
            listing = "<ol>" + "".join(f'<li style="color:{colour(k + 1)}"><span style="color:initial">'
                                      f'{html.escape(t)}</span></li>' for k, t in enumerate(texts)) + "</ol>"
            return gr.Image(render(b.photo, regions, texts), visible=True), listing, ""

        describe_go.click(on_describe, [board, describe_prompt, describe_max, describe_tokens, grid, iou_min,
                                        stable_min, model], [described, described_list, status])

        # ---- chatting --------------------------------------------------------------------------------------------
        def shown(hist):
            # the chat renders HTML: "<region2>" would be taken for a tag and dropped
            return [{"role": role, "content": html.escape(text)} for role, text in hist]

        async def stream_answer(hist, b: Board, model_name, sampling: Sampling):
            """The answer's text so far, after each step; APIError for anything the backend refuses or fails."""
            req = build_request(b, hist, model_name, sampling)
            events, _ = await run_on(executor, backend.start, req)
            text = ""
            async for evs in iterate_on(executor, events):
                for ev in evs:
                    if ev.error:
                        raise APIError(502, ev.error)
                    text += ev.text
                yield text

        async def answer(hist, b: Board, model_name, t, p, n, keep_question: bool):
            """``hist`` ends with the user's turn. On an error the page says what went wrong in a sentence; the turn
            stays in the chat (``keep_question``, to regenerate) or goes back to the question box."""
            sampling = Sampling(temperature=float(t), top_p=float(p), max_new_tokens=int(n))
            before = hist if keep_question else hist[:-1]
            text, started = "", False
            try:
                async for text in stream_answer(hist, b, model_name, sampling):
                    started = True
                    now = hist + [("assistant", text)]
                    yield now, shown(now), "", gr.skip()
            except APIError as e:
                what = "The model failed" if started else "Not sent"
                yield before, shown(before), f"**{what}:** {html.escape(message_for(e))}", gr.skip()
                return
            b.highlight = named_regions(text, len(b.regions))
            now = hist + [("assistant", text)]
            yield now, shown(now), "", b.preview()

        async def on_send(q, hist, b: Board, model_name, t, p, n):
            if not q or not q.strip():
                yield hist, shown(hist), "Type a question first.", gr.skip(), q
                return
            if b.photo is None and _PLACEHOLDER.search(q):
                yield hist, shown(hist), "Upload a photo and draw regions first.", gr.skip(), q
                return
            asked = hist + [("user", q.strip())]
            async for h, c, s, pv in answer(asked, b, model_name, t, p, n, keep_question=False):
                yield h, c, s, pv, (q if len(h) < len(asked) else "")   # a refused question goes back to the box

        send.click(on_send, [question, history, board, model, temperature, top_p, max_tokens],
                   [history, chat, status, preview, question])
        question.submit(on_send, [question, history, board, model, temperature, top_p, max_tokens],
                        [history, chat, status, preview, question])

        async def on_regenerate(hist, b: Board, model_name, t, p, n):
            if len(hist) < 2 or hist[-1][0] != "assistant":
                yield hist, shown(hist), "Nothing to regenerate yet.", gr.skip()
                return
            async for out in answer(hist[:-1], b, model_name, t, p, n, keep_question=True):
                yield out

        regenerate.click(on_regenerate, [history, board, model, temperature, top_p, max_tokens],
                         [history, chat, status, preview])

        def on_clear_chat(b: Board):
            b.highlight = []
            return [], [], "", b.preview()

        clear_chat.click(on_clear_chat, [board], [history, chat, status, preview])

        # ---- gradio_client: one question about a photo's regions -----------------------------------------------
        async def ask(photo, regions_json, q, t=0.2, p=0.7, n=256, model_name=None):
            """photo: an image; regions_json: a JSON list of REGION (docs/SERVING.md); q: the question, naming
            regions as <regionN>. Returns the answer; a bad input is an error naming it."""
            if photo is None:
                raise gr.Error("photo: an image is required")
            try:
                specs = json.loads(regions_json or "[]")
                if not isinstance(specs, list):
                    raise ValueError("expected a JSON list of REGION")
                for k, spec in enumerate(specs):
                    check_region_json(spec, f"regions[{k}]")
            except (ValueError, InputError) as e:
                raise gr.Error(f"regions: {e}") from None
            b = Board()
            b.set_photo(photo)
            b.regions = [{"kind": "json", "key": k, "spec": s} for k, s in enumerate(specs)]
            text = ""
            try:
                async for text in stream_answer([("user", q or "")], b, model_name or (models[0] if models else None),
                                                Sampling(temperature=float(t), top_p=float(p), max_new_tokens=int(n))):
                    pass
            except APIError as e:
                raise gr.Error(message_for(e)) from None
            return text

        def refresh_models(current):
            # LLaVA's page asks the controller for its models at every load: workers come and go
            try:
                names = backend.models()
            except APIError as e:
                return gr.Dropdown(), f"**The models are unavailable:** {html.escape(message_for(e))}"
            return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None)), ""

        demo.load(refresh_models, [model], [model, status])

        # the endpoint's inputs and output (not shown on the page)
        api_photo = gr.Image(type="pil", visible=False)
        api_regions, api_question, api_answer = (gr.Textbox(visible=False) for _ in range(3))
        api_t, api_p, api_n = gr.Number(0.2, visible=False), gr.Number(0.7, visible=False), gr.Number(256, visible=False)
        api_go = gr.Button(visible=False)
        api_go.click(ask, [api_photo, api_regions, api_question, api_t, api_p, api_n], [api_answer], api_name="ask")
    return demo


def main(argv=None) -> int:
    from rgpt_llava.model.builder import device_arg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="serve this checkpoint in this process")
    src.add_argument("--controller-url", help="LLaVA's controller, with rgpt_llava.serve.model_worker workers")
    p.add_argument("--model-base", default=None)
    p.add_argument("--model-name", default=None, help="the name shown (default: the checkpoint folder's)")
    p.add_argument("--device", type=device_arg, default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS)
    p.add_argument("--examples", nargs="*", default=[], help="example photos: image files or folders of them")
    p.add_argument("--sam-model", default=None, metavar="PATH",
                   help="a local SAM folder: clicks, scribbles, snapped boxes and proposals for Describe everything")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--title", default="RegionGPT")
    args = p.parse_args(argv)
    examples = []
    for item in args.examples:
        path = Path(item)
        if path.is_dir():
            examples += sorted(str(f) for f in path.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))[:12]
        elif path.is_file():
            examples.append(str(path))
        else:
            p.error(f"--examples {item}: no such file or folder")
    try:
        check_listen_address(args.host, args.port)
        backend = backend_from_args(args, args.controller_url)
        if not args.model_path:
            try:
                backend.models()
            except APIError as e:
                raise StartupError(f"--controller-url {args.controller_url}: {e.message}") from e
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_demo(backend, examples, args.title)
    print(f"the page: http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=False,
                        allowed_paths=[str(Path(e).parent) for e in examples])
    return 0


if __name__ == "__main__":
    sys.exit(main())
