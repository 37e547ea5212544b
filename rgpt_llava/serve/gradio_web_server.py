"""A web page to draw regions on a photo and chat about them: stock gradio, no fork, no frontend build.

    python -m rgpt_llava.serve.gradio_web_server --model-path CKPT [--device cpu] [--host 127.0.0.1 --port 7860]
        [--sam-model SAM_DIR]
    python -m rgpt_llava.serve.gradio_web_server --controller-url http://127.0.0.1:21001     # LLaVA's controller
        [--examples DIR_OR_IMAGE ...]

Boxes are dragged on the photo (``gradio_image_annotation``, a maintained gradio component); masks are painted with
gradio's ImageEditor (brush, eraser; one region per layer). With ``--sam-model PATH``, SAM adds three ways: clicks on
the object (and off it) in the "Click" tab, layers painted as scribbles, and boxes snapped to the object; the mask SAM
makes is what the preview shows and what the model is given. "Describe everything" answers a prompt for every region
drawn -- or, with none drawn, for each of SAM's proposals -- as a picture with numbered outlines and a list. Regions
are numbered in the order they are drawn, shown in their colours on a preview, and listed as chips: clicking one
inserts ``<regionN>`` at the cursor of the question.
A later turn may add regions; every earlier turn's regions stay addressable. Answers stream in; an answer that names
a region ("Region [2]", "region 2") highlights it on the preview. Errors (an empty mask, ``<region3>`` with two
regions, a model that is down) are shown as a sentence.

This module is the layout: gradio's Blocks and which control triggers which handler. What the handlers do, and the
photo's regions, are :mod:`rgpt_llava.serve.page` (no gradio there). The page asks through the API's backends
(:mod:`rgpt_llava.serve.backends`: the model in this process, or the workers behind LLaVA's controller), so it checks
and answers exactly as the API does. gradio's own API exposes ``/ask`` for ``gradio_client``: a photo, a JSON list
of REGION and a question in, the answer out.
"""
import argparse
import functools
import html
import inspect
import sys
from pathlib import Path
from typing import Sequence

from rgpt_llava.serve.backends import Backend, backend_from_args
from rgpt_llava.serve.chat import APIError
from rgpt_llava.serve.describe import DEFAULT_PROMPT
from rgpt_llava.serve.inputs import MAX_REGIONS
from rgpt_llava.serve.options import (StartupError, add_conv_mode_flag, add_model_flags, add_server_flags,
                                      check_listen_address, resolve_conv_mode_flag)
from rgpt_llava.serve.page import SKIP, Board, Choices, Page, PageError, Shown, photo_in_editor
from rgpt_llava.serve.palette import HEX

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



def gradio_value(value):
    """A handler's output in gradio's terms (:mod:`rgpt_llava.serve.page` returns plain values)."""
    import gradio as gr
    if value is SKIP:
        return gr.skip()
    if isinstance(value, Shown):
        return gr.Image(value.value, visible=True)
    if isinstance(value, Choices):
        return gr.Dropdown() if value.names is None else gr.Dropdown(choices=value.names, value=value.value)
    return value


def gradio_outputs(result):
    return tuple(gradio_value(v) for v in result) if isinstance(result, tuple) else gradio_value(result)


def wired(handler):
    """``handler`` as gradio calls it: its outputs in gradio's terms, a :class:`PageError` as gradio's error. Its
    signature stays (gradio reads it: the inputs, a streaming handler, ``/ask``'s parameters)."""
    import gradio as gr
    if inspect.isasyncgenfunction(handler):
        async def call(*args):
            try:
                async for out in handler(*args):
                    yield gradio_outputs(out)
            except PageError as e:
                raise gr.Error(str(e)) from None
    elif inspect.iscoroutinefunction(handler):
        async def call(*args):
            try:
                return gradio_outputs(await handler(*args))
            except PageError as e:
                raise gr.Error(str(e)) from None
    else:
        def call(*args):
            return gradio_outputs(handler(*args))
    return functools.wraps(handler)(call)


def build_demo(backend: Backend, examples: Sequence[str] = (), title: str = "RegionGPT"):
    """The page: its controls (:func:`photo_column`, :func:`chat_column`) wired to :class:`Page`'s handlers."""
    import gradio as gr

    page = Page(backend, examples)
    with gr.Blocks(title=title, head=HEAD, css=CSS) as demo:
        board = gr.State(Board())
        gr.Markdown(f"## {html.escape(title)}: ask about regions of a photo\nDrag **boxes** or paint **masks** "
                    "(one layer per region), then ask; click a region to insert `<regionN>` into the question.")
        with gr.Row():
            with gr.Column(scale=5):
                ui = photo_column(page.sam is not None, examples)
            with gr.Column(scale=6):
                ui.update(chat_column(page.models))
        wire_drawing(page, board, ui)
        wire_describe(page, board, ui)
        wire_chat(page, board, ui)
        demo.load(wired(page.refresh_models), [ui["model"]], [ui["model"], ui["status"]])
        wire_ask(page)
    return demo


def photo_column(with_sam: bool, examples: Sequence[str]) -> dict:
    """The photo, its regions (boxes, masks, clicks), the preview and chips, Describe everything."""
    import gradio as gr
    from gradio_image_annotation import image_annotator
    ui = {}
    # The editor's tab comes first: gradio 5's ImageEditor initialises its canvas only while visible, so photos
    # enter there (its own upload, or an example loaded while its tab shows); the box annotator takes them from it,
    # which works in a hidden tab.
    with gr.Tabs(selected="photo") as ui["tabs"]:
        with gr.Tab("Photo and masks", id="photo"):
            ui["editor"] = gr.ImageEditor(type="pil", image_mode="RGBA", layers=True, interactive=True,
                                          elem_id="editor", show_label=False, format="png", transforms=(),
                                          brush=gr.Brush(colors=[HEX[0]], color_mode="fixed", default_size=18),
                                          eraser=gr.Eraser(default_size=18), height=420,
                                          placeholder="Upload a photo here, then paint masks: one layer per "
                                                      "region (add layers with the layer menu)")
            ui["scribble"] = gr.Checkbox(False, visible=with_sam, elem_id="scribble",
                                         label="the layers are scribbles: SAM turns each into a mask")
        with gr.Tab("Boxes", id="boxes"):
            ui["boxes"] = image_annotator(label_list=["region"], label_colors=[HEX[0]], interactive=True,
                                          disable_edit_boxes=True, use_default_label=True, sources=[],
                                          image_type="pil", elem_id="boxes", show_label=False, height=420)
            ui["snap"] = gr.Checkbox(False, visible=with_sam, elem_id="snap",
                                     label="snap the boxes to the objects in them (SAM)")
        with gr.Tab("Click", id="click", visible=with_sam):
            ui["clicker"] = gr.Image(type="pil", interactive=False, show_label=False, elem_id="clicker",
                                     height=420, show_download_button=False, show_fullscreen_button=False)
            with gr.Row():
                ui["polarity"] = gr.Radio(["on the object", "not on it"], value="on the object",
                                          label="a click is", elem_id="polarity")
                ui["add_clicks"] = gr.Button("Add as a region", elem_id="add-clicks", size="sm")
                ui["reset_clicks"] = gr.Button("Reset the clicks", elem_id="reset-clicks", size="sm")
    ui["preview"] = gr.Image(label="regions", interactive=False, elem_id="preview", height=300)
    ui["chips"] = gr.HTML(Board().chips(), elem_id="chips")
    ui["clear_regions"] = gr.Button("Clear regions", size="sm", elem_id="clear-regions")
    with gr.Accordion("the regions as REGION JSON (for the API)", open=False):
        # a text box, not gr.Code: CodeMirror leaves the unseen part of a long line (an RLE) out of the page, so
        # what a user selects and copies would not be the whole JSON
        ui["regions_json"] = gr.Textbox("[]", interactive=False, lines=3, max_lines=8, show_copy_button=True,
                                        show_label=False, elem_id="regions-json")
    with gr.Accordion("Describe everything", open=False, elem_id="describe-panel"):
        gr.Markdown("One answer per region drawn" + (" -- or, with none drawn, per region SAM proposes."
                                                     if with_sam else "."))
        ui["describe_prompt"] = gr.Textbox(DEFAULT_PROMPT, label="prompt (the region is <region1>)",
                                           elem_id="describe-prompt")
        with gr.Row():
            ui["describe_max"] = gr.Slider(1, MAX_REGIONS, value=16, step=1, label="at most this many regions",
                                           elem_id="describe-max")
            ui["describe_tokens"] = gr.Slider(1, 256, value=32, step=1, label="max new tokens per region",
                                              elem_id="describe-tokens")
        with gr.Row(visible=with_sam):
            ui["grid"] = gr.Slider(2, 64, value=32, step=1, label="SAM: points per side", elem_id="grid")
            ui["iou_min"] = gr.Slider(0.0, 1.0, value=0.88, step=0.01, label="SAM: predicted IoU at least",
                                      elem_id="iou-min")
            ui["stable_min"] = gr.Slider(0.0, 1.0, value=0.95, step=0.01, label="SAM: stability at least",
                                         elem_id="stable-min")
        ui["describe_go"] = gr.Button("Describe everything", elem_id="describe")
        ui["described"] = gr.Image(label="described", interactive=False, elem_id="described", visible=False)
        ui["described_list"] = gr.HTML("", elem_id="described-list")
    if examples:
        ui["gallery"] = gr.Gallery(value=list(examples), label="examples: click one", columns=6, height=120,
                                   allow_preview=False, elem_id="examples")
    return ui


def chat_column(models: Sequence[str]) -> dict:
    """The model menu, the chat, the question and its buttons, the status line, the parameters."""
    import gradio as gr
    ui = {"model": gr.Dropdown(models, value=models[0] if models else None, label="model", elem_id="model"),
          "chat": gr.Chatbot(type="messages", elem_id="chat", height=460, render_markdown=False,
                             sanitize_html=True, allow_tags=False),
          "question": gr.Textbox(placeholder="What is <region1> doing next to <region2>?", lines=2,
                                 show_label=False, elem_id="question")}
    with gr.Row():
        ui["send"] = gr.Button("Send", variant="primary", elem_id="send")
        ui["regenerate"] = gr.Button("Regenerate", elem_id="regenerate")
        ui["clear_chat"] = gr.Button("Clear chat", elem_id="clear-chat")
    ui["status"] = gr.Markdown("", elem_id="status")
    with gr.Accordion("Parameters", open=False):
        ui["temperature"] = gr.Slider(0.0, 1.5, value=0.2, step=0.05, label="temperature", elem_id="temperature")
        ui["top_p"] = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="top-p", elem_id="top-p")
        ui["max_tokens"] = gr.Slider(1, 1024, value=256, step=1, label="max new tokens", elem_id="max-tokens")
    ui["history"] = gr.State([])   # (role, text) with the page's region numbers
    ui["clicks"] = gr.State([])    # the Click tab's clicks so far: (x, y, label)
    return ui


def wire_drawing(page: Page, board, ui: dict) -> None:
    """A new photo, boxes, painted layers, clicks and Clear regions -> the board, the preview and the chips."""
    import gradio as gr
    photo_outputs = [board, ui["preview"], ui["chips"], ui["boxes"], ui["history"], ui["chat"], ui["status"],
                     ui["clicker"], ui["clicks"]]
    ui["editor"].upload(lambda v, b: page.new_photo(v["background"], b), [ui["editor"], board], photo_outputs)
    drawn = [board, ui["preview"], ui["chips"], ui["status"]]
    for trigger in (ui["boxes"], ui["snap"]):
        trigger.change(wired(page.boxes_changed), [ui["boxes"], ui["snap"], board], drawn)
    for trigger in (ui["editor"], ui["scribble"]):
        trigger.change(wired(page.layers_changed), [ui["editor"], ui["scribble"], board], drawn)

    clicked = wired(page.clicked)

    async def on_click(b: Board, pending, kind, evt: gr.SelectData):
        return await clicked(b, pending, kind, *evt.index)

    ui["clicker"].select(on_click, [board, ui["clicks"], ui["polarity"]], [ui["clicks"], ui["clicker"], ui["status"]])
    ui["add_clicks"].click(wired(page.add_clicks), [board, ui["clicks"]],
                           [board, ui["clicks"], ui["clicker"], ui["preview"], ui["chips"], ui["status"]])
    ui["reset_clicks"].click(lambda b: ([], b.photo), [board], [ui["clicks"], ui["clicker"]])
    ui["chips"].change(lambda b: b.as_json(), [board], [ui["regions_json"]])

    # the editor is set while its tab shows (see photo_column), in a step of its own: the page applies an event's
    # outputs together, and the editor may take its time
    ui["clear_regions"].click(wired(page.clear_regions), [board],
                              [board, ui["preview"], ui["chips"], ui["boxes"], ui["clicks"], ui["clicker"]]).then(
        lambda: gr.Tabs(selected="photo"), None, ui["tabs"]).then(
        lambda b: photo_in_editor(b.photo) if b.photo is not None else gr.skip(), [board], [ui["editor"]])

    if "gallery" in ui:
        def on_example(b: Board, evt: gr.SelectData):
            return page.example(evt.index, b)
        ui["gallery"].select(lambda: gr.Tabs(selected="photo"), None, ui["tabs"]).then(
            on_example, [board], photo_outputs + [ui["editor"]])


def wire_describe(page: Page, board, ui: dict) -> None:
    ui["describe_go"].click(wired(page.describe),
                            [board, ui["describe_prompt"], ui["describe_max"], ui["describe_tokens"], ui["grid"],
                             ui["iou_min"], ui["stable_min"], ui["model"]],
                            [ui["described"], ui["described_list"], ui["status"]])


def wire_chat(page: Page, board, ui: dict) -> None:
    asked = [ui["question"], ui["history"], board, ui["model"], ui["temperature"], ui["top_p"], ui["max_tokens"]]
    answered = [ui["history"], ui["chat"], ui["status"], ui["preview"]]
    for trigger in (ui["send"].click, ui["question"].submit):
        trigger(wired(page.send), asked, answered + [ui["question"]])
    ui["regenerate"].click(wired(page.regenerate), asked[1:], answered)
    ui["clear_chat"].click(wired(page.clear_chat), [board], answered)


def wire_ask(page: Page) -> None:
    """gradio's ``/ask`` for gradio_client: its inputs and output are controls not shown on the page."""
    import gradio as gr
    photo = gr.Image(type="pil", visible=False)
    regions, question, answer = (gr.Textbox(visible=False) for _ in range(3))
    t, p, n = gr.Number(0.2, visible=False), gr.Number(0.7, visible=False), gr.Number(256, visible=False)
    go = gr.Button(visible=False)
    go.click(wired(page.ask), [photo, regions, question, t, p, n], [answer], api_name="ask")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder: clicks, scribbles, snapped boxes and proposals for Describe everything",
                    controller="--controller-url",
                    controller_help="LLaVA's controller, with rgpt_llava.serve.model_worker workers")
    add_server_flags(p, port=7860)
    add_conv_mode_flag(p)
    p.add_argument("--examples", nargs="*", default=[], help="example photos: image files or folders of them")
    p.add_argument("--title", default="RegionGPT")
    args = p.parse_args(argv)
    resolve_conv_mode_flag(args)
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
