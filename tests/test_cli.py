"""``python -m rgpt_llava.serve.cli``: one-shot answers on a real photo, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rgpt_llava.serve.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_one_shot_answer_with_box_and_mask(capsys, tmp_path, tiny_rgpt_dir, images_dir):
    image = images_dir / "chelsea.jpg"  # 451 x 300
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[50:200, 100:300] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    code, out, err = run_cli(capsys, "--model-path", tiny_rgpt_dir, "--image-file", str(image), "--device", "cpu",
                             "--region", "box:10,20,110,220", "--region", f"mask:{tmp_path / 'm.png'}",
                             "--query", "What is <region2> next to <region1>?", "--temperature", "0",
                             "--max-new-tokens", "5")
    assert code == 0, err
    assert "2 region(s)" in out
    assert "region 1: box, box [10, 20, 110, 220]" in out
    assert "region 2: mask, box [100, 50, 300, 200]" in out
    assert "USER: What is <region2> next to <region1>?" in out
    assert "ASSISTANT:" in out


def test_one_shot_is_deterministic_and_region_dependent(capsys, tiny_rgpt_dir, images_dir):
    image = str(images_dir / "coffee.jpg")
    common = ["--model-path", tiny_rgpt_dir, "--image-file", image, "--device", "cpu", "--temperature", "0",
              "--max-new-tokens", "6", "--query", "Describe <region>"]
    a = run_cli(capsys, *common, "--region", "box:0,0,300,200")[1]
    b = run_cli(capsys, *common, "--region", "box:0,0,300,200")[1]
    assert a == b


@pytest.mark.parametrize("args,message", [
    (["--region", "box:1,2,3"], "region 1 .*4 numbers|region 1.*box"),
    (["--region", "circle:1,2,3"], "region 1.*unknown|region 1.*circle"),
    (["--region", "box:50,10,40,20"], r"region 1.*x2 <= x1"),
    (["--region", "box:0,0,900,100"], r"region 1.*outside|region 1.*451x300|region 1.*beyond"),
    (["--region", "mask:/nonexistent/m.png"], r"/nonexistent/m.png"),
    (["--region", "box:0,0,10,10", "--region", "box:5,5,20,20", "--query", "what is <region1>?"],
     r"region\(s\) \[2\] are not referenced"),
    (["--region", "box:0,0,10,10", "--query", "compare <region1> and <region2>"], r"refers to region\(s\) \[2\]"),
])
def test_bad_input_names_the_item(capsys, tiny_rgpt_dir, images_dir, args, message):
    base = ["--model-path", tiny_rgpt_dir, "--image-file", str(images_dir / "chelsea.jpg"), "--device", "cpu"]
    if "--query" not in args:
        args = args + ["--query", "what is <region1>?"]
    code, out, err = run_cli(capsys, *base, *args)
    assert code == 2
    assert err.startswith("error: ")
    import re
    assert re.search(message, err), err


def test_bad_image_and_checkpoint(capsys, tmp_path, tiny_rgpt_dir, images_dir):
    code, _, err = run_cli(capsys, "--model-path", tiny_rgpt_dir, "--image-file", str(tmp_path / "x.jpg"),
                           "--query", "hi")
    assert code == 2 and "x.jpg: no such file" in err
    (tmp_path / "bad.jpg").write_text("not an image")
    code, _, err = run_cli(capsys, "--model-path", tiny_rgpt_dir, "--image-file", str(tmp_path / "bad.jpg"),
                           "--query", "hi")
    assert code == 2 and "bad.jpg" in err and "cannot decode the image" in err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, _, err = run_cli(capsys, "--model-path", str(tmp_path / "ckpt"), "--image-file",
                           str(images_dir / "chelsea.jpg"), "--query", "hi", "--device", "cpu")
    assert code == 2 and "unknown kind" in err


def test_interactive_chat_over_stdin(tiny_rgpt_dir, images_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "rgpt_llava.serve.cli", "--model-path", tiny_rgpt_dir, "--image-file",
         str(images_dir / "rocket.jpg"), "--device", "cpu", "--region", "box:100,50,300,400",
         "--temperature", "0", "--max-new-tokens", "4"],
        input="what is <region1>?\nand <region5>?\ndescribe it more\n\n", capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ASSISTANT:") == 2  # the <region5> turn is refused, the chat goes on
    assert "refers to region(s) [5]" in proc.stderr


def test_a_phone_photo_is_read_as_its_viewer_shows_it(capsys, tmp_path, tiny_rgpt_dir):
    # stored 40 wide x 20 high with EXIF orientation 6: a viewer shows it 20 wide x 40 high, and a box drawn on the
    # lower half of what it shows must land there (PIL alone would read the unrotated pixels)
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    code, out, err = run_cli(capsys, "--model-path", tiny_rgpt_dir, "--image-file", str(tmp_path / "phone.jpg"),
                             "--device", "cpu", "--region", "box:0,25,20,40", "--query", "what is <region1>?",
                             "--temperature", "0", "--max-new-tokens", "2")
    assert code == 0, err
    assert "(20x40), 1 region(s)" in out and "region 1: box, box [0, 25, 20, 40]" in out


def test_points_scribbles_and_snapped_boxes_through_sam(capsys, tmp_path, tiny_rgpt_dir, tiny_sam_dir, sam,
                                                        images_dir):
    image = images_dir / "chelsea.jpg"  # 451 x 300
    strokes = np.zeros((300, 451), np.uint8)
    strokes[100:104, 150:300] = 255
    Image.fromarray(strokes).save(tmp_path / "strokes.png")
    prompts = ["point:200,150;50,40,0", f"scribble:{tmp_path / 'strokes.png'}", "snap:100,50,300,250"]
    common = ["--model-path", tiny_rgpt_dir, "--image-file", str(image), "--device", "cpu", "--temperature", "0",
              "--max-new-tokens", "5", "--query", "Compare <region1>, <region2> and <region3>."]
    code, out, err = run_cli(capsys, *common, "--sam-model", tiny_sam_dir,
                             *[a for p in prompts for a in ("--region", p)])
    assert code == 0, err
    assert "region 1: mask made by SAM from point:200,150;50,40,0 (predicted IoU" in out
    assert "region 3: mask made by SAM from snap:100,50,300,250" in out
    # the same masks given as files get the same answer: what SAM made is exactly what the model pooled
    photo = Image.open(image).convert("RGB")
    files = []
    for k, spec in enumerate(prompts):
        values, (x0, y0) = sam.region(spec, k, photo).rasterize(451, 300)
        full = np.zeros((300, 451), np.uint8)
        full[y0:y0 + values.shape[0], x0:x0 + values.shape[1]] = (values > 0) * 255
        Image.fromarray(full).save(tmp_path / f"m{k}.png")
        files += ["--region", f"mask:{tmp_path / f'm{k}.png'}"]
    code, out2, err = run_cli(capsys, *common, *files)
    assert code == 0, err
    assert out.split("ASSISTANT:")[1] == out2.split("ASSISTANT:")[1]

    code, _, err = run_cli(capsys, *common[:-2], "--query", "What is <region1>?", "--region", prompts[0])
    assert code == 2 and "region 1 (point:200,150;50,40,0)" in err and "pass --sam-model PATH" in err
    code, _, err = run_cli(capsys, *common[:-2], "--query", "What is <region1>?", "--region", prompts[0],
                           "--sam-model", str(tmp_path / "nowhere"))
    assert code == 2 and "--sam-model" in err and "no such folder" in err


@pytest.mark.parametrize("entry", ["rgpt_llava.serve.cli", "rgpt_llava.serve.describe", "rgpt_llava.serve.openai_api",
                                   "rgpt_llava.serve.model_worker", "rgpt_llava.serve.gradio_web_server",
                                   "rgpt_llava.serve.batch", "rgpt_llava.eval.model_pope"])
def test_every_entry_names_a_device_it_cannot_use(entry, capsys, tmp_path):
    """Refused by the parser, before anything loads (the checkpoint named does not even exist): an unknown device
    type, and CUDA where torch finds none (on a GPU machine: an index past the last device)."""
    import importlib

    import torch
    main_of = importlib.import_module(entry).main
    missing = str(tmp_path / "nope")
    cuda, why = (("cuda:99", f"this machine has {torch.cuda.device_count()} CUDA device(s)")
                 if torch.cuda.is_available() else ("cuda", "torch finds no CUDA device on this machine; use cpu"))
    for device, message in (("gpu", "'gpu': not a torch device; use cpu, cuda or cuda:N"), (cuda, f"'{cuda}': {why}")):
        with pytest.raises(SystemExit) as exit_:
            main_of(["--model-path", missing, "--device", device])
        assert exit_.value.code == 2
        assert f"argument --device: {message}" in capsys.readouterr().err, (entry, device)


def test_the_builder_names_a_device_it_cannot_use(tiny_rgpt_dir):
    from rgpt_llava.model.builder import load_pretrained_model
    with pytest.raises(ValueError, match="device 'tpu0': not a torch device"):
        load_pretrained_model(tiny_rgpt_dir, None, device="tpu0")
