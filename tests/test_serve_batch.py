"""``python -m rgpt_llava.serve.batch``: a JSONL of requests answered as the serving engine answers each one alone;
sharded, resumable, refusals as records (or a stop with --strict), file problems before the model loads."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgpt_llava.prompt import question_answer_prompt
from rgpt_llava.serve.batch import main
from rgpt_llava.serve.engine import RegionEngine, Sampling
from rgpt_llava.serve.inputs import parse_regions

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 6

# coffee.jpg is 600 x 400
GOOD = [
    {"image": "coffee.jpg", "regions": [{"box": [10, 20, 200, 180]}], "prompt": "What is <region1>?"},
    {"id": "two", "image": "coffee.jpg", "regions": [{"box": [300, 100, 500, 350]},
                                                     {"polygon": [50, 300, 250, 260, 200, 390]}],
     "prompt": "Is <region2> next to <region1>?", "max_tokens": 3},
    {"id": 30, "image": "chelsea.jpg", "regions": ["mask:masks/cat.png"], "prompt": "Describe <region>.",
     "temperature": 0},
    {"image": "coffee.jpg", "prompt": "Describe the image."},
    {"image": "rocket.jpg", "regions": [{"rle": {"size": [4, 4], "counts": [0, 16]}}], "prompt": "What is <region1>?"},
]
# (request, the error record's message holds these)
BAD = [
    ({"image": "nowhere.jpg", "prompt": "Describe the image."}, ["image: ", "nowhere.jpg", "no such file"]),
    ({"image": "coffee.jpg", "regions": [{"box": [10, 20, 2000, 180]}], "prompt": "What is <region1>?"},
     ["regions[0]: ", "outside the 600x400 image"]),
    ({"image": "coffee.jpg", "regions": [{"box": [10, 20, 200, 180]}], "prompt": "Is <region1> by <region2>?"},
     ["prompt: ", "refers to region(s) [2]"]),
    ({"image": "masks/notes.txt", "prompt": "Describe the image."}, ["image ", "notes.txt", "cannot decode the image"]),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, images_dir):
    """Images and a mask file beside the requests (the default --image-folder: the requests file's folder)."""
    root = tmp_path_factory.mktemp("batch")
    for name in ("coffee.jpg", "chelsea.jpg", "rocket.jpg"):
        shutil.copy(images_dir / name, root / name)
    # a region mask as a file, in a subfolder (relative to the image folder)
    (root / "masks").mkdir()
    width, height = Image.open(root / "chelsea.jpg").size
    mask = np.zeros((height, width), np.uint8)
    mask[50:200, 100:300] = 255
    Image.fromarray(mask).save(root / "masks" / "cat.png")
    (root / "masks" / "notes.txt").write_text("not an image")
    return root


def rle_for(image_path):
    """An uncompressed COCO RLE of a block, at the image's size (column-major counts)."""
    width, height = Image.open(image_path).size
    mask = np.zeros((height, width), np.uint8)
    mask[10:60, 20:90] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [height, width], "counts": counts}


def requests_of(folder):
    good = [dict(r) for r in GOOD]
    good[4]["regions"] = [{"rle": rle_for(folder / "rocket.jpg")}]
    # the bad requests between the good ones: records come back in the requests' order, refusals in place
    return good[:2] + [BAD[0][0]] + good[2:4] + [BAD[1][0], BAD[2][0]] + good[4:] + [BAD[3][0]]


def write_requests(path, requests):
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def read_output(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def ids_of(requests):
    return [r.get("id", n) for n, r in enumerate(requests, 1)]


def run_batch(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_on_a_terminal(args, timeout=300):
    """The command as a user runs it: ``python -m``, its stderr a terminal (tqdm draws its bar only there)."""
    import fcntl
    import struct
    import termios
    master, slave = os.openpty()
    # a terminal 100 columns wide (a new pty has 0 columns, and tqdm draws a bar as wide as the terminal)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "rgpt_llava.serve.batch", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:     # EIO: the child closed its end
            break
        if not data:
            break
        err += data
    os.close(master)
    out = proc.communicate(timeout=timeout)[0]
    return proc.returncode, out.decode(), err.decode(errors="replace")


@pytest.fixture(scope="module")
def full_run(folder, tiny_rgpt_dir):
    """Every request answered by one run through ``python -m`` on a terminal: (requests, records, stderr)."""
    requests = requests_of(folder)
    path = write_requests(folder / "requests.jsonl", requests)
    out = folder / "answers.jsonl"
    code, _, err = run_on_a_terminal(["--model-path", tiny_rgpt_dir, "--requests", path, "--output", out,
                                      "--device", "cpu", "--max-new-tokens", NEW_TOKENS, "--chunk-size", 3])
    assert code == 0, err
    return requests, read_output(out), err


def test_answers_equal_the_engine_answering_each_request_alone(full_run, folder, tiny_rgpt_dir):
    requests, records, _ = full_run
    assert [r["id"] for r in records] == ids_of(requests)
    engine = RegionEngine.load(tiny_rgpt_dir, device="cpu")
    answered = 0
    for request, record in zip(requests, records):
        if request in [b for b, _ in BAD]:
            continue
        image = Image.open(folder / request["image"]).convert("RGB")
        specs = [s.replace("mask:", f"mask:{folder}/") if isinstance(s, str) else s
                 for s in request.get("regions", [])]
        regions = parse_regions([(s, f"regions[{k}]") for k, s in enumerate(specs)], image.size, cli=True)
        prompt = question_answer_prompt([(request["prompt"], None)])
        sampling = Sampling(temperature=0, max_new_tokens=request.get("max_tokens", NEW_TOKENS))
        expected = engine.answer(engine.prepare(image, [(prompt, regions)], sampling))[0]
        assert record == {"id": record["id"], "text": expected, "finish_reason": "length"}, request
        answered += 1
    assert answered == len(GOOD)


def test_bad_requests_are_error_records_naming_the_field(full_run):
    requests, records, err = full_run
    by_id = {r["id"]: r for r in records}
    for bad, words in BAD:
        n = requests.index(bad) + 1
        record = by_id[n]
        assert set(record) == {"id", "error"}
        for word in words:
            assert word in record["error"], (record, word)
    assert f'{len(GOOD)} answered, {len(BAD)} refused (field "error")' in err


def test_a_progress_bar_on_stderr(full_run):
    _, records, err = full_run
    assert "requests: 100%" in err and f"{len(records)}/{len(records)}" in err, err


def test_two_shards_answer_every_request_once(capsys, full_run, folder, tiny_rgpt_dir, tmp_path):
    requests, records, _ = full_run
    shards = []
    for k in range(2):
        out = tmp_path / f"answers_{k}.jsonl"
        code, _, err = run_batch(capsys, "--model-path", tiny_rgpt_dir, "--requests", folder / "requests.jsonl",
                                 "--output", out, "--device", "cpu", "--max-new-tokens", NEW_TOKENS,
                                 "--num-chunks", 2, "--chunk-idx", k)
        assert code == 0, err
        shards.append(read_output(out))
    ids = [[r["id"] for r in shard] for shard in shards]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert ids[0] + ids[1] == ids_of(requests)          # contiguous shards, in order
    assert shards[0] + shards[1] == records             # the same answers as one run


def test_a_cut_run_resumes_without_duplicates(capsys, full_run, folder, tiny_rgpt_dir, tmp_path):
    requests, records, _ = full_run
    out = tmp_path / "answers.jsonl"
    # as a killed run leaves it: three answers written, the fourth cut mid-line
    lines = (folder / "answers.jsonl").read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:15])
    code, _, err = run_batch(capsys, "--model-path", tiny_rgpt_dir, "--requests", folder / "requests.jsonl",
                             "--output", out, "--device", "cpu", "--max-new-tokens", NEW_TOKENS, "--chunk-size", 2)
    assert code == 0, err
    assert read_output(out) == records
    assert "3 already in the output" in err
    # all done: nothing to load (the checkpoint named does not even exist), nothing written
    code, _, err = run_batch(capsys, "--model-path", tmp_path / "nope", "--requests", folder / "requests.jsonl",
                             "--output", out)
    assert code == 0, err
    assert read_output(out) == records
    assert f"0 answered, 0 refused (field \"error\"), {len(records)} already in the output" in err


def test_strict_stops_at_the_first_refusal(capsys, folder, tiny_rgpt_dir, tmp_path):
    requests = requests_of(folder)
    path = write_requests(tmp_path / "requests.jsonl", requests)
    out = tmp_path / "answers.jsonl"
    code, _, err = run_batch(capsys, "--model-path", tiny_rgpt_dir, "--requests", path, "--output", out,
                             "--image-folder", folder, "--device", "cpu", "--max-new-tokens", 2, "--strict")
    assert code == 2
    first_bad = requests.index(BAD[0][0]) + 1
    assert f"error: --requests {path}, line {first_bad} (id {first_bad}): image: " in err, err
    # the requests before it are answered and kept; nothing after it
    assert [r["id"] for r in read_output(out)] == ids_of(requests)[:first_bad - 1]
    assert all("text" in r for r in read_output(out))


@pytest.mark.parametrize("lines, message", [
    (['{"image": "a.jpg", "prompt": "hi"}', '{"image": "a.jpg", "prompt": '], "line 2: malformed JSON"),
    (['{"image": "a.jpg", "prompt": "hi"}', '["a.jpg", "hi"]'], "line 2: expected a JSON object (list)"),
    (['{"image": "a.jpg", "prompt": "hi"}', '', '{"image": "a.jpg"}'], "line 3: missing field 'prompt'"),
    (['{"prompt": "hi"}'], "line 1: missing field 'image'"),
    (['{"image": "a.jpg", "prompt": "hi", "region": [{"box": [0, 0, 1, 1]}]}'], "line 1: unknown field(s) ['region']"),
    (['{"image": "a.jpg", "prompt": "hi", "regions": {"box": [0, 0, 1, 1]}}'],
     "line 1: field 'regions' must be a list"),
    (['{"image": "a.jpg", "prompt": "hi", "max_tokens": 0}'], "line 1: field 'max_tokens' must be at least 1"),
    (['{"image": "a.jpg", "prompt": "hi", "id": 1.5}'], "line 1: field 'id': id must be an integer or a string"),
    (['{"image": "a.jpg", "prompt": "hi", "id": "x"}', '{"image": "b.jpg", "prompt": "hi", "id": "x"}'],
     "id 'x' is on line 1 and line 2"),
    (['{"image": "a.jpg", "prompt": "hi"}', '{"image": "b.jpg", "prompt": "hi", "id": 1}'],
     "id 1 is on line 1 and line 2 (a line without 'id' has its line number)"),
])
def test_file_problems_are_refused_before_the_model_loads(capsys, tmp_path, lines, message):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    # the checkpoint does not exist: the file's problem is found first
    code, _, err = run_batch(capsys, "--model-path", tmp_path / "nope", "--requests", path, "--output",
                             tmp_path / "answers.jsonl")
    assert code == 2
    assert err.startswith(f"error: --requests {path}") and message in err, err
    assert not (tmp_path / "answers.jsonl").exists() or not (tmp_path / "answers.jsonl").read_text()


def test_flags_checked_before_anything_runs(capsys, tmp_path):
    path = write_requests(tmp_path / "requests.jsonl", [{"image": "a.jpg", "prompt": "hi"}])
    base = ["--model-path", str(tmp_path / "nope"), "--requests", str(path)]
    for extra, message in (
            (["--output", str(path)], f"--output {path} is also --requests: writing there would replace it"),
            (["--output", "o.jsonl", "--num-chunks", "2", "--chunk-idx", "2"], "--chunk-idx 2 must be in 0..1"),
            (["--output", "o.jsonl", "--conv-mode", "nope"], "--conv-mode 'nope' is unknown"),
            (["--output", "o.jsonl", "--top-p", "0"], "--top-p top_p must be in (0, 1]")):
        with pytest.raises(SystemExit) as exit_:
            main(base + extra)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err, extra
    assert json.loads(path.read_text()) == {"image": "a.jpg", "prompt": "hi"}      # the requests are untouched
