"""The servers as a user runs them, on loopback: LLaVA's unmodified controller, two RGPT model workers and the
OpenAI-compatible API in front of them (and in process), driven by the official openai client and by LLaVA's own
client protocol. Every process a test starts, it stops."""
import base64
import io
import json
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from servers import Servers, free_port

pytestmark = pytest.mark.slow


@pytest.fixture()
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    s.close()
    assert all(p.poll() is not None for p in s.procs)


def data_url(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


REGIONS = [{"box": [10, 20, 110, 220]}, {"polygon": [200, 50, 300, 50, 300, 150, 200, 150]},
           {"rle": {"size": [300, 451], "counts": [300 * 320, 300 * 20, 300 * 111]}}]


def regions_message(photo):
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (100, 50, 300, 200))
    parts = [{"type": "image_url", "image_url": {"url": data_url(photo)}},
             {"type": "text", "text": "Compare <region1>, <region2>, <region3> and <region4>."}]
    parts += [{"type": "region", "region": r} for r in REGIONS + [{"mask": data_url(mask)}]]
    return [{"role": "user", "content": parts}]


def test_controller_two_workers_and_the_api(servers, tiny_rgpt_dir, images_dir, tmp_path):
    from openai import BadRequestError, OpenAI
    photo = Image.open(images_dir / "chelsea.jpg").convert("RGB")
    c_port = free_port()
    controller = f"http://127.0.0.1:{c_port}"
    servers.start("-m", "llava.serve.controller", "--host", "127.0.0.1", "--port", str(c_port),
                  ready_url=controller + "/list_models", ready_method="post")
    workers = []
    for _ in range(2):
        port = free_port()
        address = f"http://127.0.0.1:{port}"
        proc = servers.start("-m", "rgpt_llava.serve.model_worker", "--controller-address", controller,
                             "--worker-address", address, "--host", "127.0.0.1", "--port", str(port),
                             "--model-path", tiny_rgpt_dir, "--model-name", "tiny-rgpt", "--device", "cpu",
                             "--limit-model-concurrency", "1", ready_url=address + "/worker_get_status",
                             ready_method="post")
        workers.append((proc, address))
    assert requests.post(controller + "/list_models").json()["models"] == ["tiny-rgpt"]

    # LLaVA's own client protocol, through the controller's proxy: params + "regions"
    prompt = "USER: <image>\nWhat is <region1>? ASSISTANT:"
    params = {"model": "tiny-rgpt", "prompt": prompt, "images": [data_url(photo).split(",", 1)[1]],
              "regions": [[REGIONS[0]]], "temperature": 0, "max_new_tokens": 6, "stop": "</s>"}
    r = requests.post(controller + "/worker_generate_stream", json=params, stream=True, timeout=60)
    chunks = [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c]
    assert chunks and all(c["error_code"] == 0 and c["text"].startswith(prompt) for c in chunks)
    assert chunks[-1]["finish_reason"] in ("stop", "length") and chunks[-1]["usage"]["completion_tokens"] >= 1
    # a bad request straight to a worker: HTTP 400 with LLaVA's error chunk; the worker goes on
    bad = requests.post(workers[0][1] + "/worker_generate_stream", json=dict(params, regions=[[{"box": [1, 2]}]]))
    assert bad.status_code == 400 and json.loads(bad.content.rstrip(b"\0"))["error_code"] == 1
    assert "regions[0][0]" in json.loads(bad.content.rstrip(b"\0"))["text"]

    # the OpenAI-compatible API in front of the controller, with the official client
    a_port = free_port()
    api = f"http://127.0.0.1:{a_port}"
    servers.start("-m", "rgpt_llava.serve.openai_api", "--controller-address", controller, "--host", "127.0.0.1",
                  "--port", str(a_port), ready_url=api + "/v1/models")
    oai = OpenAI(base_url=api + "/v1", api_key="none")
    assert [m.id for m in oai.models.list().data] == ["tiny-rgpt"]
    messages = regions_message(photo)
    out = oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0, max_tokens=6)
    text = out.choices[0].message.content
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model="tiny-rgpt", messages=messages, temperature=0, max_tokens=6, stream=True) if c.choices)
    assert streamed == text
    with pytest.raises(BadRequestError, match="outside the 451x300 image"):
        oai.chat.completions.create(model="tiny-rgpt", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(photo)}}, {"type": "text", "text": "<region1>"},
            {"type": "region", "region": {"box": [0, 0, 900, 10]}}]}])
    assert oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0,
                                       max_tokens=6).choices[0].message.content == text

    # a client that disconnects mid-stream stops its generation and frees its worker's only slot
    long = dict(params, max_new_tokens=1024, ignore_eos=True)
    for _, address in workers:
        start = time.monotonic()
        whole = requests.post(address + "/worker_generate_stream", json=long, timeout=120)
        full_s = time.monotonic() - start
        assert json.loads(whole.content.rstrip(b"\0").rsplit(b"\0", 1)[-1])["finish_reason"] == "length"
        cut = requests.post(address + "/worker_generate_stream", json=long, stream=True, timeout=120)
        next(cut.iter_lines(delimiter=b"\0"))
        cut.close()
        start = time.monotonic()
        quick = requests.post(address + "/worker_generate_stream", json=params, timeout=120)
        assert quick.status_code == 200 and time.monotonic() - start < full_s / 2, (time.monotonic() - start, full_s)
        assert requests.post(address + "/worker_get_status").json()["queue_length"] == 0

    # a worker that dies is dropped; requests go to the other one
    servers.stop(workers[0][0], kill=True)
    for _ in range(3):
        assert oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0,
                                           max_tokens=6).choices[0].message.content == text
    assert requests.post(controller + "/get_worker_address", json={"model": "tiny-rgpt"}).json()["address"] == \
        workers[1][1]


def test_the_api_with_the_model_in_process(servers, tiny_rgpt_dir, images_dir):
    from openai import OpenAI
    photo = Image.open(images_dir / "chelsea.jpg").convert("RGB")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    servers.start("-m", "rgpt_llava.serve.openai_api", "--model-path", tiny_rgpt_dir, "--model-name", "tiny-rgpt",
                  "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--limit-concurrency", "1",
                  ready_url=api + "/v1/models")
    oai = OpenAI(base_url=api + "/v1", api_key="none")
    messages = regions_message(photo)
    out = oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0, max_tokens=6)
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model="tiny-rgpt", messages=messages, temperature=0, max_tokens=6, stream=True) if c.choices)
    assert streamed == out.choices[0].message.content
    # a client that disconnects mid-stream stops its generation and frees the only slot
    long = {"model": "tiny-rgpt", "messages": messages, "max_tokens": 1000, "ignore_eos": True, "temperature": 0}
    start = time.monotonic()
    assert requests.post(api + "/v1/chat/completions", json=long, timeout=120).json()["choices"][0][
        "finish_reason"] == "length"
    full_s = time.monotonic() - start
    cut = requests.post(api + "/v1/chat/completions", json=dict(long, stream=True), stream=True, timeout=120)
    next(cut.iter_lines())
    cut.close()
    start = time.monotonic()
    oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0, max_tokens=2)
    assert time.monotonic() - start < full_s / 2, (time.monotonic() - start, full_s)
    r = requests.post(api + "/v1/chat/completions", data=b"\xff\xfe garbage")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0,
                                       max_tokens=6).choices[0].message.content == out.choices[0].message.content


def test_a_missing_controller_or_checkpoint_is_named(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.serve.openai_api", "--model-path",
                           str(tmp_path / "nope"), "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such checkpoint folder" in proc.stderr


def test_a_worker_without_its_controller_says_so(tiny_rgpt_dir):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.serve.model_worker", "--controller-address", dead,
                           "--model-path", tiny_rgpt_dir, "--device", "cpu", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and f"cannot register with the controller at {dead}" in proc.stderr


@pytest.mark.parametrize("server, flags, message", [
    ("rgpt_llava.serve.openai_api", ["--controller-address", "http://127.0.0.1:9", "--sam-model", "MISSING"],
     "error: --sam-model MISSING"),
    ("rgpt_llava.serve.gradio_web_server", ["--controller-url", "http://127.0.0.1:9", "--sam-model", "MISSING"],
     "error: --sam-model MISSING"),
    ("rgpt_llava.serve.gradio_web_server", ["--controller-url", "http://127.0.0.1:9"],
     "error: --controller-url http://127.0.0.1:9: "),
    ("rgpt_llava.serve.gradio_web_server", ["--model-path", "MISSING"], "error: --model-path MISSING: "),
])
def test_the_servers_name_a_flag_they_cannot_start_with(server, flags, message, tmp_path, capsys):
    import importlib
    flags = [f.replace("MISSING", str(tmp_path / "nope")) for f in flags]
    assert importlib.import_module(server).main(flags + ["--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith(message.replace("MISSING", str(tmp_path / "nope")))


@pytest.mark.parametrize("server", ["rgpt_llava.serve.openai_api", "rgpt_llava.serve.model_worker",
                                    "rgpt_llava.serve.gradio_web_server"])
def test_the_servers_name_an_address_they_cannot_listen_on(server, tmp_path, capsys):
    """Checked before the model loads: the checkpoint given does not exist, so a server that loaded first would
    name --model-path instead."""
    import importlib
    import socket
    main = importlib.import_module(server).main
    missing = ["--model-path", str(tmp_path / "nope"), "--device", "cpu"] + (
        ["--no-register"] if server.endswith("model_worker") else [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [(["--port", "70000"], "error: --port 70000: a port is 1-65535"),
                 (["--port", "0"], "error: --port 0: a port is 1-65535"),
                 (["--port", str(port)], f"error: --host 127.0.0.1 --port {port}: cannot listen there "
                                         "(Address already in use)"),
                 (["--host", "no-such-host.invalid", "--port", str(free_port())],
                  "error: --host no-such-host.invalid: no such host")]
        for flags, message in cases:
            assert main(missing + flags) == 2, flags
            assert capsys.readouterr().err.startswith(message), flags
    # and the address being free, the next problem is the checkpoint's
    assert main(missing + ["--port", str(free_port())]) == 2
    assert f"--model-path {tmp_path / 'nope'}" in capsys.readouterr().err
