"""A web page to draw regions on a photo and chat about them: stock gradio, no fork, no frontend build.

    python -m rgpt_llava.serve.gradio_web_server --model-path CKPT [--device cpu] [--host 127.0.0.1 --port 7860]
    python -m rgpt_llava.serve.gradio_web_server --controller-url http://127.0.0.1:21001     # LLaVA's controller
        [--examples DIR_OR_IMAGE ...]

Boxes are dragged on the photo (``gradio_image_annotation``, a maintained gradio component); masks are painted with
gradio's ImageEditor (brush, eraser; one region per layer). Regions are numbered in the order they are drawn, shown
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
from rgpt_llava.serve.engine import RegionEngine, Sampling, iterate_on, model_name_of, run_on
from rgpt_llava.serve.inputs import MAX_REGIONS, InputError, check_region_json, load_image_file
from rgpt_llava.serve.openai_api import (APIError, ChatRequest, ControllerBackend, LocalBackend, Message, Part,
                                         _bad)

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
    regions: List[dict] = field(default_factory=list)   # {"kind": box|mask, "key", "spec": REGION JSON or PIL mask}
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
            if r["kind"] == kind:
                r["spec"] = current[r["key"]]
        kept += [{"kind": kind, "key": k, "spec": s} for k, s in current.items() if k not in known]
        self.regions = kept

    def sync_boxes(self, drawn: Sequence[list]) -> List[int]:
        """``drawn``: the annotator's boxes as [x1, y1, x2, y2, label]. A box keeps its region while it carries the
        region's number as its label (the page writes it there); an unlabelled box is a new region; a number no
        box carries any more is a deleted region. Returns each box's region number, after renumbering."""
        by_number = {n: r for n, r in enumerate(self.regions, 1) if r["kind"] == "box"}
        kept, claimed = {}, []
        for k, (*corners, label) in enumerate(drawn):
            n = int(label) if str(label).isdigit() else None
            if n in by_number and n not in claimed:
                claimed.append(n)
                kept[k] = by_number[n]
                kept[k]["spec"] = {"box": corners}
        gone = [r for n, r in by_number.items() if n not in claimed]
        self.regions = [r for r in self.regions if not any(r is g for g in gone)]
        for k, (*corners, label) in enumerate(drawn):
            if k not in kept:
                kept[k] = {"kind": "box", "key": object(), "spec": {"box": corners}}
                self.regions.append(kept[k])
        return [next(i + 1 for i, r in enumerate(self.regions) if r is kept[k]) for k in range(len(drawn))]

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
            if r["kind"] == "box":
                x1, y1, x2, y2 = r["spec"]["box"]
                draw.rectangle([x1, y1, x2, y2], fill=fill + (alpha,), outline=fill + (255,),
                               width=width * (3 if n in self.highlight else 1))
                anchor = (x1, y1)
            else:
                mask = r["spec"]
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
            if r["kind"] == "mask":
                rle = mask_utils.encode(np.asfortranarray(np.asarray(r["spec"]) > 0).astype(np.uint8))
                out.append({"rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
            else:
                out.append(r["spec"])
        return json.dumps(out)

    def chips(self) -> str:
        if not self.regions:
            return "<i>No regions yet: drag boxes, or paint masks (one layer per region).</i>"
        out = []
        for n, r in enumerate(self.regions, 1):
            if r["kind"] == "box":
                what = "box [" + ", ".join(f"{v:.0f}" for v in r["spec"]["box"]) + "]"
            else:
                what = f"mask, {int((np.asarray(r['spec']) > 0).sum())} px"
            out.append(f'<button class="rgpt-chip" style="border-color:{colour(n)}" '
                       f'onclick="rgptInsert(\'&lt;region{n}&gt;\')" title="insert &lt;region{n}&gt;">'
                       f'&lt;region{n}&gt; {html.escape(what)}</button>')
        return "".join(out)


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
        parts += [Part("region", region=board.regions[page]["spec"], param=f"region {page + 1}")
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
                    with gr.Tab("Boxes", id="boxes"):
                        boxes = image_annotator(label_list=["region"], label_colors=[COLOURS[0]], interactive=True,
                                                disable_edit_boxes=True, use_default_label=True, sources=[],
                                                image_type="pil", elem_id="boxes", show_label=False, height=420)
                preview = gr.Image(label="regions", interactive=False, elem_id="preview", height=300)
                chips = gr.HTML(Board().chips(), elem_id="chips")
                clear_regions = gr.Button("Clear regions", size="sm", elem_id="clear-regions")
                with gr.Accordion("the regions as REGION JSON (for the API)", open=False):
                    regions_json = gr.Code("[]", language="json", interactive=False, elem_id="regions-json")
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

        # ---- drawing ---------------------------------------------------------------------------------------------
        def photo_in_editor(photo):
            # a background alone (no layers given): the editor sizes its canvas and first layer to the photo
            return {"background": photo, "layers": None, "composite": None}

        def new_photo(image, b: Board):
            b.set_photo(image)
            return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, [], [], ""

        editor.upload(lambda v, b: new_photo(v["background"], b), [editor, board],
                      [board, preview, chips, boxes, history, chat, status])

        def on_boxes(value, b: Board):
            if b.photo is None or value is None:
                return gr.skip(), b, b.preview(), b.chips()
            numbered = b.sync_boxes([[float(x[k]) for k in ("xmin", "ymin", "xmax", "ymax")] + [x.get("label")]
                                     for x in value.get("boxes") or []])
            drawn = value.get("boxes") or []
            relabel = [dict(x, label=str(n), color=rgb(colour(n))) for x, n in zip(drawn, numbered)]
            changed = any(str(x.get("label")) != str(n) for x, n in zip(drawn, numbered))
            return ({"image": value["image"], "boxes": relabel} if changed else gr.skip(), b, b.preview(),
                    b.chips())

        def on_editor(value, b: Board):
            if b.photo is None or value is None:
                return b, b.preview(), b.chips()
            b.sync("mask", masks_from(value, b.photo.size))
            return b, b.preview(), b.chips()

        boxes.change(on_boxes, [boxes, board], [boxes, board, preview, chips])
        editor.change(on_editor, [editor, board], [board, preview, chips])
        chips.change(lambda b: b.as_json(), [board], [regions_json])

        def on_clear_regions(b: Board):
            b.regions, b.highlight = [], []
            if b.photo is None:
                return b, b.preview(), b.chips(), gr.skip(), gr.skip()
            return b, b.preview(), b.chips(), {"image": b.photo, "boxes": []}, photo_in_editor(b.photo)

        # the editor is set while its tab shows (see above)
        clear_regions.click(lambda: gr.Tabs(selected="photo"), None, tabs).then(
            on_clear_regions, [board], [board, preview, chips, boxes, editor])

        if examples:
            def on_example(b: Board, evt: gr.SelectData):
                return (*new_photo(load_image_file(examples[evt.index], "example").convert("RGB"), b),
                        photo_in_editor(b.photo))
            gallery.select(lambda: gr.Tabs(selected="photo"), None, tabs).then(
                on_example, [board], [board, preview, chips, boxes, history, chat, status, editor])

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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="serve this checkpoint in this process")
    src.add_argument("--controller-url", help="LLaVA's controller, with rgpt_llava.serve.model_worker workers")
    p.add_argument("--model-base", default=None)
    p.add_argument("--model-name", default=None, help="the name shown (default: the checkpoint folder's)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS)
    p.add_argument("--examples", nargs="*", default=[], help="example photos: image files or folders of them")
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
    if args.model_path:
        from rgpt_llava.model.builder import CheckpointError
        try:
            engine = RegionEngine.load(args.model_path, args.model_base, args.device, args.load_8bit,
                                       args.load_4bit, max_regions=args.max_regions,
                                       name=args.model_name or model_name_of(args.model_path))
        except (CheckpointError, ValueError, FileNotFoundError, NotImplementedError) as e:
            print(f"error: --model-path {args.model_path}: {e}", file=sys.stderr)
            return 2
        backend = LocalBackend(engine, args.conv_mode)
    else:
        backend = ControllerBackend(args.controller_url, args.conv_mode)
        try:
            backend.models()
        except APIError as e:
            print(f"error: --controller-url {args.controller_url}: {e.message}", file=sys.stderr)
            return 2
    demo = build_demo(backend, examples, args.title)
    print(f"the page: http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=False,
                        allowed_paths=[str(Path(e).parent) for e in examples])
    return 0


if __name__ == "__main__":
    sys.exit(main())
