"""The web page: its region bookkeeping (in process), gradio's API through gradio_client, and the page itself in a real
headless Chromium (Debian's, driven by Playwright): upload, a brush stroke, a dragged box, a question built by
clicking the regions, the streamed answer -- equal to the engine's for the same regions -- and a bad question's
message. Servers listen on loopback and are stopped by the test that starts them."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgpt_llava.serve import page as W
from rgpt_llava.serve.engine import Sampling

from servers import Servers, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# WebGL through SwiftShader: with --disable-gpu the mask editor's canvas falls back to a path that keeps the page busy
# for 30-60 s each time its tab is shown again (3 s with SwiftShader)
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]


def board_with(photo_size=(64, 48)):
    b = W.Board()
    b.set_photo(Image.new("RGB", photo_size, (200, 200, 200)))
    return b


def test_boxes_keep_their_numbers_through_edits_and_deletions():
    b = board_with()
    b.sync_boxes([[1, 1, 10, 10]])                                          # a new box: region 1
    b.sync("mask", {("layer", 0): Image.new("L", (64, 48), 255)})          # then a mask: region 2
    b.sync_boxes([[2, 2, 20, 20], [30, 5, 40, 15]])                        # box 1 moved, a new box: region 3
    assert [(r["kind"], r["spec"]) for r in b.regions if r["kind"] == "box"] == [
        ("box", {"box": [2, 2, 20, 20]}), ("box", {"box": [30, 5, 40, 15]})]
    assert [r["kind"] for r in b.regions] == ["box", "mask", "box"]
    b.sync_boxes([[30, 5, 40, 15], [2, 2, 20, 20]])                        # the annotator reordered them: no change
    assert [r["spec"] for r in b.regions if r["kind"] == "box"] == [{"box": [2, 2, 20, 20]}, {"box": [30, 5, 40, 15]}]
    b.sync_boxes([[30, 5, 40, 15]])                                        # box 1 deleted: the others move up
    assert [(r["kind"], r.get("spec") if r["kind"] == "box" else None) for r in b.regions] == [
        ("mask", None), ("box", {"box": [30, 5, 40, 15]})]
    b.sync_boxes([[30, 5, 45, 25]])                                        # resized: still region 2
    assert [r["kind"] for r in b.regions] == ["mask", "box"] and b.regions[1]["spec"] == {"box": [30, 5, 45, 25]}
    b.sync("mask", {})                                                     # the layer emptied
    assert [r["kind"] for r in b.regions] == ["box"]


def test_a_drag_is_one_region_from_press_to_release():
    b = board_with()
    b.sync_boxes([[5, 5, 15, 15]])
    press = {"xmin": 30, "ymin": 20, "xmax": 30, "ymax": 20}
    for x2, y2 in [(30, 20), (34, 24), (40, 30)]:          # as the annotator reports a drag: the press, then sizes
        b.sync_boxes([[float(x[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                      for x in W.drawn_boxes({"boxes": [{"xmin": 5, "ymin": 5, "xmax": 15, "ymax": 15},
                                                         dict(press, xmax=x2, ymax=y2)]})])
    assert [r["spec"]["box"] for r in b.regions] == [[5, 5, 15, 15], [30, 20, 40, 30]]


def test_masks_are_the_layers_with_paint():
    layer = np.zeros((48, 64, 4), np.uint8)
    layer[10:20, 5:15, 3] = 255
    found = W.masks_from({"layers": [np.zeros((48, 64, 4), np.uint8), layer]}, (64, 48))
    assert list(found) == [("layer", 1)]
    assert (np.asarray(found[("layer", 1)]) > 0).sum() == 100


def test_a_conversation_becomes_the_api_request():
    b = board_with()
    b.sync_boxes([[1, 1, 10, 10], [20, 20, 30, 30], [40, 5, 60, 40]])
    turns = [("user", "What is <region3> next to <region1>?"), ("assistant", "a cat"), ("user", "And <region2>?")]
    req = W.build_request(b, turns, "m", Sampling())
    texts = [" ".join(p.text for p in m.parts if p.kind == "text") for m in req.messages]
    # numbered by first mention; each region attached to the turn that first names it
    assert texts == ["What is <region1> next to <region2>?", "a cat", "And <region3>?"]
    regions = [[p.region["box"] for p in m.parts if p.kind == "region"] for m in req.messages]
    assert regions == [[[40, 5, 60, 40], [1, 1, 10, 10]], [], [[20, 20, 30, 30]]]
    assert req.messages[0].parts[0].kind == "image" and req.region_count() == 3
    with pytest.raises(W.APIError, match="names region 4 but 3 region"):
        W.build_request(b, [("user", "<region4>?")], "m", Sampling())
    drawn_but_unasked = W.build_request(b, [("user", "What is <region2>?")], "m", Sampling())
    assert drawn_but_unasked.region_count() == 1


def test_answers_name_regions():
    assert W.named_regions("Region [2]", 3) == [2]
    assert W.named_regions("region 1 is left of <region3>; region 9 does not exist", 3) == [1, 3]


class AnsweringBackend:
    """A backend (rgpt_llava.serve.backends.Backend) that answers every request with one text, keeping the request."""
    executor, sam = None, None

    def __init__(self, text: str):
        self.text, self.requests = text, []

    def models(self):
        return ["m"]

    def start(self, req):
        from rgpt_llava.serve.backends import Event, Usage
        self.requests.append(req)
        return iter([[Event(0, self.text, "stop")]]), Usage()


def test_the_page_handlers_run_without_gradio():
    import asyncio

    async def outputs(stream):
        return [out async for out in stream]
    backend = AnsweringBackend("Region [2] is the cat.")
    page = W.Page(backend)
    b = board_with()
    b.sync_boxes([[1, 1, 10, 10], [20, 20, 30, 30]])
    *_, (history, chat, status, preview, question) = asyncio.run(outputs(page.send("What is <region2>?", [], b, "m",
                                                                                   0, 1, 8)))
    assert history == [("user", "What is <region2>?"), ("assistant", "Region [2] is the cat.")]
    assert chat[0]["content"] == "What is &lt;region2&gt;?" and status == "" and question == ""
    assert b.highlight == [2] and preview.size == (64, 48)
    [req] = backend.requests
    assert [p.region for p in req.messages[0].parts if p.kind == "region"] == [{"box": [20, 20, 30, 30]}]
    [(_, _, status, preview, question)] = asyncio.run(outputs(page.send("  ", [], b, "m", 0, 1, 8)))
    assert status == "Type a question first." and preview is W.SKIP and question == "  "
    # describe everything: one answer per region drawn; without regions (and SAM), what to do first
    described, listing, status = asyncio.run(page.describe(b, "Caption <region1>.", 16, 8, 4, 0.5, 0.5, "m"))
    assert isinstance(described, W.Shown) and listing.count("<li") == 2 and status == ""
    assert backend.requests[-1].per_region and backend.requests[-1].region_count() == 2
    assert asyncio.run(page.describe(board_with(), "Caption <region1>.", 16, 8, 4, 0.5, 0.5, "m")) == (
        W.SKIP, "", "Draw regions first (this page has no SAM to propose them).")


def upload(page, photo) -> None:
    """The photo into the mask editor, until the preview shows it: the editor drops a file given while its canvas
    is still initialising (the first page a fresh server serves), so a missed upload is tried again."""
    page.wait_for_selector("#editor input[type=file]", state="attached")
    for attempt in range(3):
        page.locator("#editor input[type=file]").first.set_input_files(str(photo))
        try:
            page.wait_for_selector("#preview img", timeout=40000)
            return
        except Exception:
            if attempt == 2:
                raise
            page.wait_for_timeout(1000)


def brush_stroke(page) -> None:
    """A short stroke across the middle of the mask editor (the brush is its tool after an upload)."""
    canvas = page.locator("#editor canvas").first.bounding_box()
    x, y = canvas["x"] + canvas["width"] * 0.5, canvas["y"] + canvas["height"] * 0.55
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(12):
        page.mouse.move(x + 3 * k, y + k)
    page.mouse.up()


def readable(text: str) -> str:
    """Text as a browser shows it: printable characters, runs of white space as one."""
    return " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())


@pytest.fixture()
def web(tmp_path, real_tok_rgpt_dir, images_dir):
    servers = Servers(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    servers.start("-m", "rgpt_llava.serve.gradio_web_server", "--model-path", real_tok_rgpt_dir, "--device", "cpu",
                  "--model-name", "tiny-rgpt", "--host", "127.0.0.1", "--port", str(port), "--examples",
                  str(images_dir / "chelsea.jpg"), ready_url=url, timeout=300)
    yield url
    servers.close()


def engine_answer(tiny_rgpt_dir, photo: Image.Image, question: str, regions_json: str, max_new_tokens=256) -> str:
    from rgpt_llava.serve.engine import RegionEngine
    from rgpt_llava.serve.inputs import parse_regions
    from rgpt_llava.serve.chat import conversation_prompt
    engine = RegionEngine.load(tiny_rgpt_dir, device="cpu")
    regions = parse_regions([(r, f"r{k}") for k, r in enumerate(json.loads(regions_json))], photo.size)
    prompt = conversation_prompt([("user", "<image>\n" + question)], None, "vicuna_v1")
    sampling = Sampling(temperature=0, top_p=0.7, max_new_tokens=max_new_tokens)
    return engine.answer(engine.prepare(photo, [(prompt, regions)], sampling))[0]


@pytest.mark.slow
def test_gradio_client_asks_about_regions(web, real_tok_rgpt_dir, images_dir, tmp_path):
    from gradio_client import Client, handle_file
    photo = images_dir / "chelsea.jpg"
    regions = json.dumps([{"box": [10, 20, 110, 220]}, {"polygon": [200, 50, 300, 50, 300, 150]}])
    client = Client(web, verbose=False)
    answer = client.predict(handle_file(str(photo)), regions, "What is <region1> next to <region2>?", 0, 0.7, 256,
                            api_name="/ask")
    assert answer == engine_answer(real_tok_rgpt_dir, Image.open(photo).convert("RGB"),
                                   "What is <region1> next to <region2>?", regions)
    with pytest.raises(Exception, match="outside the 451x300 image"):
        client.predict(handle_file(str(photo)), json.dumps([{"box": [0, 0, 900, 10]}]), "<region1>?", 0, 0.7, 8,
                       api_name="/ask")
    with pytest.raises(Exception, match="no SAM model was given: pass --sam-model PATH"):
        client.predict(handle_file(str(photo)), json.dumps([{"points": [[20, 20]]}]), "<region1>?", 0, 0.7, 8,
                       api_name="/ask")
    with pytest.raises(Exception, match="unknown REGION field"):
        client.predict(handle_file(str(photo)), json.dumps([{"circle": 1}]), "<region1>?", 0, 0.7, 8,
                       api_name="/ask")
    # a phone photo (stored 40 x 20, EXIF orientation 6): its regions are read in the frame a viewer shows, 20 x 40
    phone = Image.new("RGB", (40, 20), (90, 90, 90))
    exif = phone.getexif()
    exif[0x0112] = 6
    phone.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert client.predict(handle_file(str(tmp_path / "phone.jpg")), json.dumps([{"box": [0, 25, 20, 40]}]),
                          "What is <region1>?", 0, 0.7, 4, api_name="/ask") is not None


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: apt-get install chromium (.ci/run does)")
def test_the_page_in_a_real_browser(web, real_tok_rgpt_dir, images_dir, tmp_path):
    from playwright.sync_api import sync_playwright
    shots = Path(os.environ.get("RGPT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    photo = images_dir / "chelsea.jpg"

    def settle(page, timeout=120000):
        page.wait_for_timeout(400)
        page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar, .meta-text, .generating')",
                               timeout=timeout)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(web)
            upload(page, photo)
            settle(page)
            # a brush stroke on the photo (the brush is the editor's tool after an upload)
            brush_stroke(page)
            page.wait_for_function("() => [...document.querySelectorAll('#chips button')]"
                                   ".some(b => b.innerText.includes('mask'))", timeout=120000)
            # a box dragged in the Boxes tab
            page.get_by_role("tab", name="Boxes").click()
            page.wait_for_selector("#boxes canvas", timeout=120000)
            page.wait_for_timeout(1000)
            box = page.locator("#boxes canvas").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.25)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.60, steps=12)
            page.mouse.up()
            page.wait_for_function("() => document.querySelectorAll('#chips button').length == 2", timeout=120000)
            settle(page)
            # the box as released, not as first reported mid-drag (the annotator reports sizes while it is dragged)
            page.wait_for_function("() => { const m = document.querySelector('#chips').innerText"
                                   ".match(/box \\[([^\\]]+)\\]/); if (!m) return false;"
                                   " const [x1, y1, x2, y2] = m[1].split(',').map(Number);"
                                   " return x2 - x1 >= 10 && y2 - y1 >= 10; }", timeout=60000)
            # greedy answers, to compare with the engine's
            page.get_by_text("Parameters").click()
            page.locator("#temperature input[type=number]").fill("0")
            page.locator("#temperature input[type=number]").press("Enter")
            # the question, its regions inserted by clicking them
            question = page.locator("#question textarea")
            question.click()
            question.type("What is ")
            page.locator("#chips button").nth(1).click()
            question.type(" next to ")
            page.locator("#chips button").nth(0).click()
            question.type("?")
            asked = question.input_value()
            assert asked == "What is <region2> next to <region1>?"
            page.get_by_text("the regions as REGION JSON").click()
            page.wait_for_function("() => JSON.parse(document.querySelector('#regions-json textarea').value)"
                                   ".length == 2", timeout=120000)
            regions_json = page.locator("#regions-json textarea").input_value()
            page.click("#send")
            page.wait_for_function("() => document.querySelectorAll('#chat .message').length >= 2", timeout=120000)
            settle(page)
            shown = page.locator("#chat .message").all_inner_texts()
            expected = engine_answer(real_tok_rgpt_dir, Image.open(photo).convert("RGB"), asked, regions_json)
            assert readable(shown[0]) == asked and readable(shown[-1]) == readable(expected) != ""
            page.screenshot(path=str(shots / "web_demo.png"))
            # a bad question: a sentence on the page, and the question back in its box
            question.fill("And <region7>?")
            page.click("#send")
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('region 7')",
                                   timeout=120000)
            assert "2 region(s) are drawn" in page.locator("#status").inner_text()
            assert question.input_value() == "And <region7>?"
            page.screenshot(path=str(shots / "web_demo_error.png"))
        finally:
            browser.close()


@pytest.mark.slow
def test_the_page_in_front_of_llavas_controller(tmp_path, real_tok_rgpt_dir, images_dir):
    from gradio_client import Client, handle_file
    servers = Servers(tmp_path)
    try:
        c_port, w_port, page_port = free_port(), free_port(), free_port()
        controller = f"http://127.0.0.1:{c_port}"
        servers.start("-m", "llava.serve.controller", "--host", "127.0.0.1", "--port", str(c_port),
                      ready_url=controller + "/list_models", ready_method="post")
        worker = servers.start("-m", "rgpt_llava.serve.model_worker", "--controller-address", controller,
                               "--worker-address", f"http://127.0.0.1:{w_port}", "--port", str(w_port),
                               "--model-path", real_tok_rgpt_dir, "--model-name", "tiny-rgpt", "--device", "cpu",
                               ready_url=f"http://127.0.0.1:{w_port}/worker_get_status", ready_method="post")
        url = f"http://127.0.0.1:{page_port}/"
        servers.start("-m", "rgpt_llava.serve.gradio_web_server", "--controller-url", controller, "--host",
                      "127.0.0.1", "--port", str(page_port), ready_url=url)
        client = Client(url, verbose=False)
        photo = images_dir / "chelsea.jpg"
        regions = json.dumps([{"box": [10, 20, 110, 220]}])
        answer = client.predict(handle_file(str(photo)), regions, "What is <region1>?", 0, 0.7, 12, api_name="/ask")
        assert answer == engine_answer(real_tok_rgpt_dir, Image.open(photo).convert("RGB"), "What is <region1>?",
                                       regions, max_new_tokens=12)
        servers.stop(worker, kill=True)          # the model goes down: a sentence, not a stack trace
        with pytest.raises(Exception, match="no worker serves the model 'tiny-rgpt'|does not answer"):
            client.predict(handle_file(str(photo)), regions, "What is <region1>?", 0, 0.7, 12, api_name="/ask")
    finally:
        servers.close()


@pytest.fixture()
def sam_web(tmp_path, real_tok_rgpt_dir, tiny_sam_dir):
    servers = Servers(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    servers.start("-m", "rgpt_llava.serve.gradio_web_server", "--model-path", real_tok_rgpt_dir, "--device", "cpu",
                  "--model-name", "tiny-rgpt", "--host", "127.0.0.1", "--port", str(port), "--sam-model",
                  tiny_sam_dir, ready_url=url, timeout=300)
    yield url
    servers.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: apt-get install chromium (.ci/run does)")
def test_sam_on_the_page_in_a_real_browser(sam_web, real_tok_rgpt_dir, tiny_sam_dir, images_dir, tmp_path):
    """Clicks (on and off the object), a snapped box and a scribble become SAM's masks; the answer equals the engine's
    for the page's REGION JSON (the masks as RLE, no SAM involved): what the page shows is what the model was given.
    Describe everything: SAM's proposals (none drawn yet), then the drawn regions."""
    from gradio_client import Client, handle_file
    from playwright.sync_api import sync_playwright
    shots = Path(os.environ.get("RGPT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    photo = images_dir / "chelsea.jpg"

    # gradio_client: clicks as REGION JSON, answered as with the mask SAM makes of them
    from rgpt_llava.sam import SamPrompter
    from rgpt_llava.regions.rasterize import full_mask
    pil = Image.open(photo).convert("RGB")
    made = full_mask(SamPrompter(tiny_sam_dir, "cpu").region({"points": [[200, 150]]}, 0, pil), *pil.size)
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(made.astype(np.uint8)))
    as_mask = json.dumps([{"rle": {"size": [300, 451], "counts": rle["counts"].decode()}}])
    client = Client(sam_web, verbose=False)
    answer = client.predict(handle_file(str(photo)), json.dumps([{"points": [[200, 150]]}]), "What is <region1>?", 0,
                            0.7, 8, api_name="/ask")
    assert answer == engine_answer(real_tok_rgpt_dir, pil, "What is <region1>?", as_mask, max_new_tokens=8)

    def settle(page, timeout=120000):
        page.wait_for_timeout(400)
        page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar, .meta-text, .generating')",
                               timeout=timeout)

    def set_number(page, elem_id, value):
        field = page.locator(f"#{elem_id} input[type=number]")
        field.fill(str(value))
        field.press("Enter")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(sam_web)
            upload(page, photo)
            settle(page)
            # no region drawn yet: "Describe everything" describes SAM's proposals
            page.get_by_text("Describe everything", exact=True).first.click()
            for elem_id, value in [("describe-tokens", 4), ("grid", 4), ("iou-min", 0), ("stable-min", 0),
                                   ("describe-max", 3)]:
                set_number(page, elem_id, value)
            page.locator("#describe").click(timeout=120000)
            page.wait_for_function("() => { const n = document.querySelectorAll('#described-list li').length; "
                                   "return n >= 1 && n <= 3; }", timeout=120000)
            settle(page)
            # clicks: two on the object, one off it, then "Add as a region"
            page.get_by_role("tab", name="Click").click()
            page.wait_for_function("() => { const i = document.querySelector('#clicker img'); "
                                   "return i && i.getBoundingClientRect().width > 0; }", timeout=120000)
            img = page.locator("#clicker img").first.bounding_box()
            for fx, fy, label in [(0.5, 0.5, "on the object"), (0.3, 0.3, "on the object"), (0.8, 0.8, "not on it")]:
                page.get_by_text(label, exact=True).click()
                page.mouse.click(img["x"] + img["width"] * fx, img["y"] + img["height"] * fy)
                settle(page)
            page.locator("#add-clicks").click(timeout=120000)
            page.wait_for_function("() => document.querySelector('#chips').innerText.includes('from 3 clicks')",
                                   timeout=120000)
            # a box, snapped by SAM
            page.get_by_role("tab", name="Boxes").click()
            page.wait_for_selector("#boxes canvas", timeout=120000)
            page.wait_for_timeout(1000)
            box = page.locator("#boxes canvas").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.25)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.60, box["y"] + box["height"] * 0.60, steps=12)
            page.mouse.up()
            page.wait_for_function("() => document.querySelectorAll('#chips button').length == 2", timeout=120000)
            settle(page)
            page.locator("#snap input").check()
            page.wait_for_function("() => document.querySelector('#chips').innerText.includes('snapped by SAM')",
                                   timeout=120000)
            settle(page)
            page.get_by_text("Parameters").click()
            set_number(page, "temperature", 0)
            set_number(page, "max-tokens", 24)
            question = page.locator("#question textarea")
            question.fill("What is <region1> next to <region2>?")
            page.get_by_text("the regions as REGION JSON").click()
            page.wait_for_function("() => (document.querySelector('#regions-json textarea').value"
                                   ".match(/\"rle\"/g) || []).length == 2", timeout=120000)
            regions_json = page.locator("#regions-json textarea").input_value()
            assert [list(r) for r in json.loads(regions_json)] == [["rle"], ["rle"]]
            page.click("#send")
            page.wait_for_function("() => document.querySelectorAll('#chat .message').length >= 2", timeout=120000)
            settle(page)
            shown = page.locator("#chat .message").all_inner_texts()
            expected = engine_answer(real_tok_rgpt_dir, Image.open(photo).convert("RGB"),
                                     "What is <region1> next to <region2>?", regions_json, max_new_tokens=24)
            assert readable(shown[-1]) == readable(expected) != ""
            # describe the two regions drawn
            page.locator("#describe").click(timeout=120000)
            page.wait_for_function("() => document.querySelectorAll('#described-list li').length == 2",
                                   timeout=120000)
            settle(page)
            assert page.locator("#described img").count() == 1
            page.screenshot(path=str(shots / "web_demo_sam.png"), full_page=True)
            # a brush stroke read as a scribble: SAM's mask becomes region 3; unticked, the stroke itself is the mask
            page.evaluate("window.scrollTo(0, 0)")
            page.get_by_role("tab", name="Photo and masks").dispatch_event("click")
            page.locator("#scribble input").check(timeout=120000)
            settle(page)
            brush_stroke(page)
            page.wait_for_function("() => document.querySelector('#chips').innerText.includes('from a scribble')",
                                   timeout=120000)
            assert page.locator("#chips button").count() == 3
            page.locator("#scribble input").uncheck()
            page.wait_for_function("() => !document.querySelector('#chips').innerText.includes('scribble')",
                                   timeout=120000)
        finally:
            browser.close()
