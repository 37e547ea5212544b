"""SAM's prompts through the serving layer (tiny random SAM, in process): the API's chat and describe endpoint, the
worker's params, the controller path's forwarding, and the describe CLI's JSON and PNG."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from starlette.testclient import TestClient

from rgpt_llava.regions.rasterize import full_mask
from rgpt_llava.serve import backends as B, chat as C, openai_api as A
from rgpt_llava.serve.describe import DEFAULT_PROMPT, describe, main as describe_main
from rgpt_llava.serve.engine import RegionEngine, Sampling

POINTS = {"points": [[200, 150], [40, 40]], "labels": [1, 0]}


@pytest.fixture(scope="module")
def engine(tiny_rgpt_dir, tiny_sam_dir):
    return RegionEngine.load(tiny_rgpt_dir, device="cpu", name="tiny-rgpt", sam_model=tiny_sam_dir)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(A.build_app(B.LocalBackend(engine, "vicuna_v1"), max_regions=8)) as c:
        yield c


@pytest.fixture(scope="module")
def bare_client(tiny_rgpt_dir):
    engine = RegionEngine.load(tiny_rgpt_dir, device="cpu", name="tiny-rgpt")
    with TestClient(A.build_app(B.LocalBackend(engine, "vicuna_v1"), max_regions=8)) as c:
        yield c


@pytest.fixture(scope="module")
def photo(images_dir):
    return Image.open(images_dir / "chelsea.jpg").convert("RGB")   # 451 x 300


def data_url(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mask_url(mask):
    return data_url(Image.fromarray(mask.astype(np.uint8) * 255))


def ask(client, photo, region):
    return client.post("/v1/chat/completions", json={
        "model": "tiny-rgpt", "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(photo)}},
                                                  {"type": "text", "text": "What is <region1>?"},
                                                  {"type": "region", "region": region}]}]})


def test_chat_with_points_answers_as_with_the_mask_sam_made(client, bare_client, engine, photo):
    made = full_mask(engine.sam.region(POINTS, 0, photo), *photo.size)
    with_points = ask(client, photo, POINTS)
    assert with_points.status_code == 200, with_points.text
    with_mask = ask(bare_client, photo, {"mask": mask_url(made)})
    assert with_points.json()["choices"][0]["message"] == with_mask.json()["choices"][0]["message"]
    snapped = ask(client, photo, {"box": [100, 50, 300, 250], "snap": True})
    assert snapped.status_code == 200, snapped.text

    refused = ask(bare_client, photo, POINTS)
    assert refused.status_code == 400
    err = refused.json()["error"]
    assert err["param"] == "messages[0].content[2].region" and "--sam-model PATH" in err["message"]
    assert ask(bare_client, photo, {"box": [100, 50, 300, 250]}).status_code == 200     # boxes keep working


def rle_mask(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_describe_endpoint_with_given_regions(client, engine, photo):
    regions = [{"box": [10, 20, 110, 220]}, POINTS]
    r = client.post("/v1/regions/describe", json={"image": data_url(photo), "regions": regions, "max_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["prompt"]) == (451, 300, DEFAULT_PROMPT)
    got = body["regions"]
    assert [g["index"] for g in got] == [1, 2] and got[0]["box"] == [10, 20, 110, 220] and got[0]["score"] is None
    box_mask = np.zeros((300, 451), bool)
    box_mask[20:220, 10:110] = True
    sam_region = engine.sam.region(POINTS, 1, photo)
    assert np.array_equal(rle_mask(got[0]["rle"]), box_mask)
    assert np.array_equal(rle_mask(got[1]["rle"]), full_mask(sam_region, 451, 300))
    assert got[1]["score"] == pytest.approx(sam_region.score, abs=1e-4) and got[1]["area"] == int(rle_mask(
        got[1]["rle"]).sum())
    # the same answers as the describe CLI's function, and as one chat request per region
    from rgpt_llava.serve.inputs import parse_regions
    parsed = parse_regions([(x, "r") for x in regions], photo.size, image=photo, sam=engine.sam)
    texts = describe(engine, photo, parsed, max_new_tokens=6, progress=False)
    assert [g["text"] for g in got] == texts
    single = ask(client, photo, POINTS).json()["choices"][0]["message"]["content"]
    assert texts[1] != "" and isinstance(single, str)


def test_describe_endpoint_with_sam_proposals(client, engine, photo):
    r = client.post("/v1/regions/describe", json={"image": data_url(photo), "points_per_side": 4,
                                                  "pred_iou_thresh": 0, "stability_score_thresh": 0,
                                                  "max_regions": 3, "max_tokens": 4,
                                                  "prompt": "What is the category of <region1>?"})
    assert r.status_code == 200, r.text
    got = r.json()["regions"]
    found = engine.sam.propose(photo, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)[:3]
    assert len(got) == len(found) >= 1
    for g, (mask, score) in zip(got, found):
        assert np.array_equal(rle_mask(g["rle"]), mask) and g["score"] == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("patch,param,message", [
    ({"regions": None}, "regions", "no regions were given and this server has no SAM"),
    ({"prompt": "Describe the picture."}, "prompt", "names the one region as <region1>"),
    ({"prompt": "Compare <region1> and <region2>."}, "prompt", "names the one region"),
    ({"colour": 1}, "colour", "unrecognized argument"),
    ({"max_regions": 0}, "max_regions", "max_regions must be an integer in \\[1, 8\\]"),
    ({"image": "data:image/png;base64,AAAA"}, "image", "cannot decode the image"),
    ({"regions": []}, "regions", "non-empty list"),
    ({"regions": [POINTS]}, "regions\\[0\\]", "--sam-model PATH"),
])
def test_describe_endpoint_refuses_bad_requests(bare_client, photo, patch, param, message):
    body = {"image": data_url(photo), "regions": [{"box": [1, 2, 30, 40]}], **patch}
    body = {k: v for k, v in body.items() if v is not None}
    r = bare_client.post("/v1/regions/describe", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    import re
    assert re.fullmatch(param, err["param"]) and re.search(message, err["message"]), err


def test_the_controller_path_forwards_the_mask_sam_made(engine, photo):
    backend = B.ControllerBackend("http://127.0.0.1:9", "vicuna_v1", sam=engine.sam)
    region = backend.resolve(POINTS, "messages[0].content[2].region", photo)
    sent = B.worker_region(region)
    png = Image.open(io.BytesIO(base64.b64decode(sent["mask"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(png) > 0, full_mask(engine.sam.region(POINTS, 0, photo), 451, 300))
    assert backend.resolve({"box": [1, 2, 3, 4]}, "p", photo) == {"box": [1, 2, 3, 4]}
    with pytest.raises(C.APIError, match="point 1 \\(900, 10\\) lies outside"):
        backend.resolve({"points": [[900, 10]]}, "p", photo)


def test_the_worker_resolves_prompts_with_its_sam(engine, photo, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)              # LLaVA's worker module writes its log file where it is imported
    from rgpt_llava.serve.model_worker import parse_params
    from rgpt_llava.serve.inputs import InputError
    b64 = data_url(photo).split(",", 1)[1]
    params = {"prompt": "USER: <image>\nWhat is <region1>? ASSISTANT:", "images": [b64], "regions": [[POINTS]],
              "temperature": 0, "max_new_tokens": 4}
    job, _ = parse_params(engine, params)
    expected = engine.prepare(photo, [(params["prompt"], [engine.sam.region(POINTS, 0, photo)])],
                              Sampling(temperature=0, max_new_tokens=4))
    assert job.masks[0].equal(expected.masks[0])
    sam, engine.sam = engine.sam, None
    try:
        with pytest.raises(InputError, match=r"regions\[0\]\[0\].*--sam-model PATH"):
            parse_params(engine, params)
    finally:
        engine.sam = sam


def test_describe_cli_writes_json_and_png(capsys, tmp_path, tiny_rgpt_dir, tiny_sam_dir, engine, images_dir, photo):
    (tmp_path / "r.json").write_text(json.dumps([{"box": [10, 20, 110, 220]}, POINTS,
                                                 {"polygon": [250, 30, 400, 30, 420, 200]}]))
    args = ["--model-path", tiny_rgpt_dir, "--image-file", str(images_dir / "chelsea.jpg"), "--device", "cpu",
            "--max-new-tokens", "6", "--out", str(tmp_path / "d.json"), "--png", str(tmp_path / "d.png")]
    assert describe_main(args + ["--regions", str(tmp_path / "r.json"), "--sam-model", tiny_sam_dir]) == 0
    out = json.loads((tmp_path / "d.json").read_text())
    assert [r["index"] for r in out["regions"]] == [1, 2, 3]
    from rgpt_llava.serve.inputs import parse_regions
    parsed = parse_regions([(x, "r") for x in json.loads((tmp_path / "r.json").read_text())], photo.size,
                           image=photo, sam=engine.sam)
    assert [r["text"] for r in out["regions"]] == describe(engine, photo, parsed, max_new_tokens=6, progress=False)
    picture = Image.open(tmp_path / "d.png")
    assert picture.width == 451 and picture.height == 300 + 6 + 14 * 3
    # a region's outline is drawn in its colour on its edge, 2 px wide, with a light fill inside
    from rgpt_llava.geometry import parse_region
    from rgpt_llava.serve.describe import draw_outlines
    from rgpt_llava.serve.palette import RGB as COLOURS
    alone = draw_outlines(photo, [parse_region({"box": [10, 20, 110, 220]}, 0, photo.size)], ["a cat"])
    assert alone.size == (451, 300 + 6 + 14)
    assert alone.getpixel((10, 100)) == alone.getpixel((11, 100)) == COLOURS[0]
    inside = np.asarray(photo, np.float32)[100, 50] * 0.75 + np.asarray(COLOURS[0], np.float32) * 0.25
    assert np.abs(np.asarray(alone.getpixel((50, 100))) - inside).max() <= 1
    assert alone.getpixel((300, 100)) == photo.getpixel((300, 100))
    printed = capsys.readouterr().out
    assert "region 1 [10, 20, 110, 220]:" in printed and "wrote " + str(tmp_path / "d.png") in printed

    # automatic proposals, capped
    assert describe_main(args + ["--sam-model", tiny_sam_dir, "--points-per-side", "4", "--pred-iou-thresh", "0",
                                 "--stability-score-thresh", "0", "--max-regions", "2"]) == 0
    assert 1 <= len(json.loads((tmp_path / "d.json").read_text())["regions"]) <= 2
    # a list longer than --max-regions: the first N, said so
    assert describe_main(args + ["--regions", str(tmp_path / "r.json"), "--sam-model", tiny_sam_dir,
                                 "--max-regions", "1"]) == 0
    assert len(json.loads((tmp_path / "d.json").read_text())["regions"]) == 1
    assert "describing the first 1 of 3 regions" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--regions", "REGIONS"], "regions\\[0\\]|--regions item 1: region 2.*--sam-model PATH"),
    (["--regions", "MISSING"], "--regions: .*no such file"),
    (["--regions", "REGIONS", "--prompt", "Describe it."], "--prompt: the prompt must name the one region"),
    (["--sam-model", "NOWHERE"], "--sam-model .*no such folder"),
])
def test_describe_cli_refuses_bad_input(capsys, tmp_path, tiny_rgpt_dir, images_dir, extra, message):
    (tmp_path / "r.json").write_text(json.dumps([{"box": [10, 20, 110, 220]}, POINTS]))
    subs = {"REGIONS": str(tmp_path / "r.json"), "MISSING": str(tmp_path / "none.json"),
            "NOWHERE": str(tmp_path / "nowhere")}
    code = describe_main(["--model-path", tiny_rgpt_dir, "--image-file", str(images_dir / "chelsea.jpg"),
                          "--device", "cpu", *[subs.get(a, a) for a in extra]])
    err = capsys.readouterr().err
    import re
    assert code == 2 and re.search(message, err), err
    with pytest.raises(SystemExit):
        describe_main(["--model-path", tiny_rgpt_dir, "--image-file", str(images_dir / "chelsea.jpg")])
    assert "give the regions: --sam-model PATH" in capsys.readouterr().err


def test_describe_cli_never_writes_over_what_it_reads(capsys, tmp_path, tiny_rgpt_dir, images_dir):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((images_dir / "chelsea.jpg").read_bytes())
    regions = tmp_path / "r.json"
    regions.write_text(json.dumps([{"box": [10, 20, 110, 220]}]))
    base = ["--model-path", tiny_rgpt_dir, "--image-file", str(photo), "--regions", str(regions), "--device", "cpu"]
    for extra, message in ((["--png", str(photo)], f"--png {photo} is also --image-file"),
                           (["--out", str(regions)], f"--out {regions} is also --regions"),
                           (["--out", str(tmp_path / "x"), "--png", str(tmp_path / "x")],
                            f"--png {tmp_path / 'x'} is also --out: two outputs in one file")):
        with pytest.raises(SystemExit) as e:
            describe_main(base + extra)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert photo.read_bytes() == (images_dir / "chelsea.jpg").read_bytes()
    assert json.loads(regions.read_text()) == [{"box": [10, 20, 110, 220]}]
