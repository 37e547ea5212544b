"""The servers with ``--engine vllm``, started as a user starts them (``python -m ...`` on a loopback port): the
OpenAI-compatible API answers every request -- plain, per region, streamed, several turns, 64 concurrent clients with
bad requests among them -- exactly as the same API on the HF engine does (greedy), bad requests get its 4xx bodies;
vLLM's engine process killed under load gives 503s (in flight and new), a failing health endpoint and exit status
1. The LLaVA worker with ``--engine vllm`` answers as the HF engine. Needs the vllm stack (RGPT_STACK=vllm)."""
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vllm stack (RGPT_STACK=vllm) runs these tests")

import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from rgpt_llava.serve.backends import LocalBackend  # noqa: E402
from rgpt_llava.serve.engine import RegionEngine  # noqa: E402
from rgpt_llava.serve.openai_api import build_app  # noqa: E402
from servers import Servers, free_port  # noqa: E402
from test_vllm import tiny_rgpt_for_vllm  # noqa: E402

NAME = "rgpt-tiny"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer_dir, tiny_clip_dir):
    return tiny_rgpt_for_vllm(tmp_path_factory.mktemp("vllm_serve"), tiny_tokenizer_dir, tiny_clip_dir)


@pytest.fixture(scope="module")
def hf_api(checkpoint):
    """The same API on the HF engine, in process: what every answer and error must equal."""
    engine = RegionEngine.load(checkpoint, device="cpu", name=NAME)
    with TestClient(build_app(LocalBackend(engine, "vicuna_v1"), max_regions=64)) as client:
        yield client


@pytest.fixture(scope="module")
def photo_url(images_dir):
    buf = io.BytesIO()
    Image.open(images_dir / "coffee.jpg").convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start_api(servers: Servers, checkpoint: str, *extra: str) -> str:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")   # GiB: the default would take a share of the machine
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    servers.start("-m", "rgpt_llava.serve.openai_api", "--model-path", checkpoint, "--model-name", NAME,
                  "--engine", "vllm", "--device", "cpu", "--port", str(port), "--max-regions", "64", *extra,
                  ready_url=base + "/health", timeout=300)
    return base


def engine_processes(server_pid: int):
    """vLLM's processes under a server (its engine core and workers), not multiprocessing's resource tracker."""
    import psutil
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]


def assert_gone(processes, timeout=30.0):
    import psutil
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"vLLM's processes outlived their server: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def vllm_api(checkpoint, tmp_path_factory):
    """The API on vLLM for the module; stopping it (SIGTERM, as a supervisor does) stops vLLM's processes too."""
    servers = Servers(tmp_path_factory.mktemp("vllm_api"))
    try:
        base = start_api(servers, checkpoint)
        engine = engine_processes(servers.procs[-1].pid)
        assert engine
        yield base
    finally:
        servers.close()
    assert_gone(engine)


def box(k: int) -> dict:
    x, y = (17 * k) % 500, (29 * k) % 300
    return {"box": [x, y, x + 60 + k % 40, y + 50 + k % 30]}


def chat(url: str, text: str, regions, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    content += [{"type": "region", "region": r} for r in regions]
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": MAX_TOKENS, **extra}


def answers(response_json: dict):
    return [(c["message"]["content"], c["finish_reason"]) for c in response_json["choices"]]


def good_requests(url: str):
    return {
        "one region": chat(url, "What is <region>?", [box(1)]),
        "regionN out of order": chat(url, "Is <region2> left of <region1>? Compare <region2> with <region3>.",
                                     [box(2), box(3), box(4)]),
        "per region": chat(url, "Describe <region> briefly.", [box(k) for k in range(5)], per_region=True),
        "two choices": chat(url, "What is <region1>?", [box(6)], n=2),
        "stop string": chat(url, "What is <region1>?", [box(7)], stop=["e"]),
        "exact length": chat(url, "What is <region1>?", [box(8)], ignore_eos=True, max_tokens=20),
        "several turns": {"model": NAME, "temperature": 0, "max_tokens": MAX_TOKENS, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What is <region1>?"},
                                         {"type": "region", "region": box(9)}]},
            {"role": "assistant", "content": "a cup."},
            {"role": "user", "content": [{"type": "text", "text": "And <region2>, beside <region1>?"},
                                         {"type": "region", "region": box(10)}]}]},
        "no region": chat(url, "Describe the image.", []),
    }


def bad_requests(url: str):
    return {
        "region outside the image": chat(url, "What is <region1>?", [{"box": [10, 10, 900, 50]}]),
        "placeholder without its region": chat(url, "Compare <region1> and <region2>.", [box(1)]),
        "malformed region": chat(url, "What is <region1>?", [{"box": [1, 2, 3]}]),
        "unknown model": dict(chat(url, "What is <region1>?", [box(1)]), model="other"),
        "max_tokens below 1": chat(url, "What is <region1>?", [box(1)], max_tokens=0),
        "65 regions": chat(url, "Describe <region>.", [box(k) for k in range(65)], per_region=True),
    }


def test_answers_and_errors_equal_the_hf_engines(vllm_api, hf_api, photo_url):
    for what, body in good_requests(photo_url).items():
        expected = hf_api.post("/v1/chat/completions", json=body)
        got = requests.post(vllm_api + "/v1/chat/completions", json=body, timeout=120)
        assert expected.status_code == got.status_code == 200, (what, got.text)
        assert answers(got.json()) == answers(expected.json()), what
        assert got.json()["usage"] == expected.json()["usage"], what
    for what, body in bad_requests(photo_url).items():
        expected = hf_api.post("/v1/chat/completions", json=body)
        got = requests.post(vllm_api + "/v1/chat/completions", json=body, timeout=120)
        assert 400 <= got.status_code < 500 and got.status_code == expected.status_code, (what, got.text)
        assert got.json() == expected.json(), what
    assert requests.get(vllm_api + "/health", timeout=10).json() == {"status": "ok"}
    assert [m["id"] for m in requests.get(vllm_api + "/v1/models", timeout=10).json()["data"]] == [NAME]


def test_a_streamed_answer_adds_up_to_the_hf_engines(vllm_api, hf_api, photo_url):
    body = chat(photo_url, "Describe <region> briefly.", [box(k) for k in range(3)], per_region=True)
    expected = answers(hf_api.post("/v1/chat/completions", json=body).json())
    texts, reasons, events = [""] * 3, [None] * 3, 0
    with requests.post(vllm_api + "/v1/chat/completions", json=dict(body, stream=True), stream=True,
                       timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[len(b"data: "):])
            events += 1
            for c in chunk["choices"]:
                texts[c["index"]] += c["delta"].get("content", "")
                reasons[c["index"]] = c["finish_reason"] or reasons[c["index"]]
    assert list(zip(texts, reasons)) == expected
    assert events > 2, "the answer came in one piece: not streamed"


def test_64_concurrent_clients_with_bad_requests_mixed_in(vllm_api, hf_api, photo_url):
    """Every good request gets its own answer (each asks about other boxes: a misrouted answer would show), every bad
    one its 4xx; nothing lost."""
    bodies = []
    for k in range(64):
        if k % 8 == 5:
            bodies.append(chat(photo_url, "What is <region1>?", [{"box": [k, k, 5000, 60]}]))   # outside the image
        else:
            count = 1 + k % 3
            bodies.append(chat(photo_url, "What is " + " next to ".join(f"<region{j + 1}>" for j in range(count))
                               + "?", [box(3 * k + j) for j in range(count)], max_tokens=8 + k % 9))
    expected = [hf_api.post("/v1/chat/completions", json=b) for b in bodies]
    got = [None] * len(bodies)

    def client(i):
        got[i] = requests.post(vllm_api + "/v1/chat/completions", json=bodies[i], timeout=300)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g.status_code == e.status_code, (i, g.text)
        if e.status_code == 200:
            assert answers(g.json()) == answers(e.json()), i
        else:
            assert g.json() == e.json(), i
    assert sum(e.status_code == 200 for e in expected) == 56
    distinct = {answers(e.json())[0][0] for e in expected if e.status_code == 200}
    assert len(distinct) > 10, "the requests' answers hardly differ: a misrouted answer would not show"


def test_a_dead_engine_gives_503s_a_failing_health_check_and_exit_status_1(checkpoint, photo_url, tmp_path):
    servers = Servers(tmp_path)
    try:
        base = start_api(servers, checkpoint)
        proc = servers.procs[-1]
        long_answer = chat(photo_url, "What is <region1>?", [box(1)], max_tokens=900, ignore_eos=True)
        stream = requests.post(base + "/v1/chat/completions", json=dict(long_answer, stream=True), stream=True,
                               timeout=120)
        lines = stream.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first[len(b"data: "):])["choices"][0]["delta"]["role"] == "assistant"
        whole = {}
        waiting = threading.Thread(target=lambda: whole.update(r=requests.post(
            base + "/v1/chat/completions", json=long_answer, timeout=120)))
        waiting.start()
        time.sleep(1.0)
        # vLLM's processes (its engine core), and only those: not the server itself
        engine = engine_processes(proc.pid)
        assert engine
        for p in engine:
            p.kill()
        last = [json.loads(line[len(b"data: "):]) for line in lines if line and line != b"data: [DONE]"][-1]
        assert last["error"]["type"] == "service_unavailable" and "engine has stopped" in last["error"]["message"]
        waiting.join(timeout=60)
        assert whole["r"].status_code == 503, whole["r"].text
        assert whole["r"].json()["error"]["type"] == "service_unavailable"
        health = requests.get(base + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["error"]["type"] == "service_unavailable"
        new = requests.post(base + "/v1/chat/completions", json=chat(photo_url, "What is <region1>?", [box(2)]),
                            timeout=30)
        assert new.status_code == 503 and "engine has stopped" in new.json()["error"]["message"]
        assert proc.wait(timeout=60) == 1
    finally:
        servers.close()


def test_the_llava_worker_on_vllm_answers_as_the_hf_engine(checkpoint, images_dir, tmp_path):
    """LLaVA's worker protocol with ``--engine vllm`` (no controller): the prompt echoed, then the HF engine's answer;
    a bad region is LLaVA's error chunk with a 400."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    buf = io.BytesIO()
    Image.open(images_dir / "coffee.jpg").convert("RGB").save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    prompt = ("A chat between a curious human and an artificial intelligence assistant. USER: <image>\n"
              "What is <region1> next to <region2>? ASSISTANT:")
    params = {"prompt": prompt, "images": [image], "regions": [[box(1), box(2)]], "temperature": 0,
              "max_new_tokens": MAX_TOKENS}
    hf = RegionEngine.load(checkpoint, device="cpu")
    from rgpt_llava.serve.model_worker import parse_params
    expected = hf.answer(parse_params(hf, params)[0])[0]
    servers = Servers(tmp_path)
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        servers.start("-m", "rgpt_llava.serve.model_worker", "--model-path", checkpoint, "--engine", "vllm",
                      "--device", "cpu", "--port", str(port), "--no-register",
                      ready_url=base + "/worker_get_status", ready_method="post", timeout=300)
        r = requests.post(base + "/worker_generate_stream", json=params, stream=True, timeout=120)
        chunks = [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c]
        assert r.status_code == 200 and chunks[-1]["error_code"] == 0
        assert chunks[-1]["text"] == prompt + expected
        bad = requests.post(base + "/worker_generate_stream", json=dict(params, regions=[[{"box": [0, 0, 9999, 5]}]]),
                            timeout=60)
        assert bad.status_code == 400 and json.loads(bad.content.rstrip(b"\0"))["error_code"] == 1
        engine = engine_processes(servers.procs[-1].pid)
        assert engine
    finally:
        servers.close()
    assert_gone(engine)
