"""The OpenAI-compatible API, in process (starlette's TestClient): answers that equal the engine's on the same prompt
and regions, streaming, n / seed / per_region, multi-turn regions, an alpha-channel mask, and every bad request a 4xx
with OpenAI's error shape after which the next request succeeds. Real servers on loopback: test_serve_processes.py."""
import base64
import io
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from starlette.testclient import TestClient

from rgpt_llava.geometry import parse_region
from rgpt_llava.serve import backends as B, chat as C, openai_api as A
from rgpt_llava.serve.engine import RegionEngine, Sampling

QUESTION = "What is <region1> next to <region2>?"


@pytest.fixture(scope="module")
def engine(tiny_rgpt_dir):
    return RegionEngine.load(tiny_rgpt_dir, device="cpu", name="tiny-rgpt")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(A.build_app(B.LocalBackend(engine, "vicuna_v1"), max_regions=8)) as c:
        yield c


@pytest.fixture(scope="module")
def photo(images_dir):
    return Image.open(images_dir / "chelsea.jpg").convert("RGB")   # 451 x 300


def data_url(image, fmt="PNG"):
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def user(*parts):
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def image_part(image):
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


def region(r):
    return {"type": "region", "region": r}


def chat(client, messages, **kw):
    r = client.post("/v1/chat/completions", json={"model": "tiny-rgpt", "messages": messages, "temperature": 0,
                                                  "max_tokens": 8, **kw})
    return r


def engine_answer(engine, photo, prompt_turns, specs, max_new_tokens=8):
    prompt = C.conversation_prompt(prompt_turns, None, "vicuna_v1")
    regs = [parse_region(s, k, photo.size) for k, s in enumerate(specs)]
    return engine.answer(engine.prepare(photo, [(prompt, regs)], Sampling(temperature=0,
                                                                          max_new_tokens=max_new_tokens)))[0]


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny-rgpt"]


def test_regions_reach_the_model_in_order(client, engine, photo):
    mask = np.zeros((300, 451), np.uint8)
    mask[50:200, 100:300] = 255
    forms = [({"box": [10, 20, 110, 220]}, "box:10,20,110,220"),
             ({"mask": data_url(Image.fromarray(mask))}, "box:100,50,300,200")]
    r = chat(client, [user(image_part(photo), QUESTION, region(forms[0][0]), region(forms[1][0]))])
    assert r.status_code == 200, r.text
    body = r.json()
    expected = engine_answer(engine, photo, [("user", "<image>\n" + QUESTION)], [forms[0][1], forms[1][1]])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] >= 1
    # the same regions in the other order give the other prompt's answer
    swapped = chat(client, [user(image_part(photo), QUESTION, region(forms[1][0]), region(forms[0][0]))]).json()
    assert swapped["choices"][0]["message"]["content"] == engine_answer(
        engine, photo, [("user", "<image>\n" + QUESTION)], [forms[1][1], forms[0][1]])


def test_regions_without_placeholders_stand_where_they_are(client, engine, photo):
    r = chat(client, [user(image_part(photo), "What is", region({"box": [10, 20, 110, 220]}), "doing?")]).json()
    assert r["choices"][0]["message"]["content"] == engine_answer(
        engine, photo, [("user", "<image>\nWhat is <region1> doing?")], ["box:10,20,110,220"])


def test_stream_equals_the_whole_answer(client):
    red = Image.new("RGB", (64, 48), (200, 30, 30))
    messages = [user(image_part(red), "Describe", region({"box": [5, 5, 40, 40]}))]
    whole = chat(client, messages).json()
    with client.stream("POST", "/v1/chat/completions", json={"model": "tiny-rgpt", "messages": messages,
                                                              "temperature": 0, "max_tokens": 8, "stream": True,
                                                              "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]


def test_n_and_seed(client, photo):
    messages = [user(image_part(photo), "Describe", region({"box": [10, 20, 110, 220]}))]
    a = chat(client, messages, n=3, seed=5, temperature=1.5, max_tokens=10).json()
    b = chat(client, messages, n=3, seed=5, temperature=1.5, max_tokens=10).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c["message"]["content"] for c in b["choices"]]


def test_per_region_answers_each_region_as_its_own_request(client, engine, photo):
    boxes = [[10, 20, 110, 220], [200, 50, 300, 150], [300, 100, 440, 290]]
    batch = chat(client, [user(image_part(photo), "Describe <region> briefly.", *[region({"box": b}) for b in boxes])],
                 per_region=True).json()
    one_by_one = [chat(client, [user(image_part(photo), "Describe <region> briefly.", region({"box": b}))]).json()
                  for b in boxes]
    assert [c["message"]["content"] for c in batch["choices"]] == \
        [r["choices"][0]["message"]["content"] for r in one_by_one]


def test_multi_turn_keeps_earlier_regions_addressable(client, engine, photo):
    first = chat(client, [user(image_part(photo), "What is", region({"box": [10, 20, 110, 220]}), "?")]).json()
    said = first["choices"][0]["message"]["content"]
    second = chat(client, [user(image_part(photo), "What is", region({"box": [10, 20, 110, 220]}), "?"),
                           {"role": "assistant", "content": said},
                           user("And <region2> next to <region1>?", region({"box": [300, 100, 440, 290]}))]).json()
    expected = engine_answer(engine, photo, [("user", "<image>\nWhat is <region1> ?"), ("assistant", said),
                                             ("user", "And <region2> next to <region1>?")],
                             ["box:10,20,110,220", "box:300,100,440,290"])
    assert second["choices"][0]["message"]["content"] == expected


def test_an_alpha_channel_is_a_mask_region(client, engine, photo):
    rgba = photo.convert("RGBA")
    alpha = Image.new("L", photo.size, 0)
    alpha.paste(255, (100, 50, 300, 200))
    rgba.putalpha(alpha)
    with_alpha = chat(client, [user({"type": "image_url", "image_url": {"url": data_url(rgba)}}, "Describe <region1>")])
    assert with_alpha.status_code == 200, with_alpha.text
    assert with_alpha.json()["choices"][0]["message"]["content"] == engine_answer(
        engine, photo, [("user", "<image>\nDescribe <region1>")], ["box:100,50,300,200"])


BAD = [
    ({"messages": []}, 400, "messages", "non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "role must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400, "messages[0].content[0].type",
     "unsupported content part type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}]}]},
     400, "messages[0].content[0].image_url.url", "only data: URLs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,AAA"}}]}]},
     400, "messages[0].content[0].image_url.url", "not valid base64"),
    ({"messages": [user("hi", region({"box": [0, 0, 5, 5]}))]}, 400, "messages", "regions were given without an image"),
    ({"messages": [user("<region3>?")]}, 400, "messages", r"refers to region\(s\) \[3\]"),
    ({"messages": "IMG", "extra": 1}, 400, "extra", "unrecognized request argument"),
    ({"frequency_penalty": 0.5}, 400, "frequency_penalty", "not supported"),
    ({"logprobs": True}, 400, "logprobs", "not supported"),
    ({"temperature": "hot"}, 400, "temperature", "must be a number"),
    ({"max_tokens": 0}, 400, "max_tokens", r"must be an integer in \[1, "),
    ({"n": 99}, 400, "n", "must be an integer in"),
    ({"stop": [1]}, 400, "stop", "list of up to 4 strings"),
    ({"model": "gpt-4"}, 404, "model", "does not exist"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options", "needs stream"),
    ({"per_region": True, "n": 2}, 400, "n", "per_region"),
]


@pytest.mark.parametrize("patch,status,param,message", BAD, ids=[b[2] + ":" + b[3][:20] for b in BAD])
def test_bad_requests_get_a_4xx_and_the_server_goes_on(client, photo, patch, status, param, message):
    r = client.post("/v1/chat/completions", json={"model": "tiny-rgpt", "messages": [user("hi")], **patch})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert re.search(message, err["message"]), err["message"]
    ok = chat(client, [user(image_part(photo), "Describe", region({"box": [10, 20, 110, 220]}))])
    assert ok.status_code == 200


def test_bad_region_and_image_problems_name_the_part(client, photo):
    cases = [
        (region({"box": [0, 0, 5000, 10]}), "messages[0].content[1].region", "outside the 451x300 image"),
        (region({"box": [0, 0, 5, 5], "label": "cat"}), "messages[0].content[1].region", "unknown REGION field"),
        (region({"mask": data_url(Image.new("L", (10, 10), 255))}), "messages[0].content[1].region",
         "does not match the image size"),
        ({"type": "region"}, "messages[0].content[1].region", "needs a region"),
    ]
    for part, param, message in cases:
        r = chat(client, [user(image_part(photo), part, "what is <region1>?")])
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and message in err["message"], err
    too_many = [region({"box": [k, k, k + 10, k + 10]}) for k in range(9)]
    r = chat(client, [user(image_part(photo), "Describe", *too_many)])
    assert r.status_code == 400 and "limit is 8" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = chat(client, [user(image_part(photo), "Describe" + " every word" * 600, region({"box": [1, 2, 30, 40]}))])
    assert r.status_code == 400 and "the model's context is" in r.json()["error"]["message"]


def test_the_openai_client_works_unchanged(client, engine, photo):
    from openai import OpenAI
    oai = OpenAI(base_url=str(client.base_url) + "/v1", api_key="none", http_client=client)
    messages = [user(image_part(photo), "Describe", region({"box": [10, 20, 110, 220]}))]
    out = oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0, max_tokens=8)
    expected = engine_answer(engine, photo, [("user", "<image>\nDescribe <region1>")], ["box:10,20,110,220"])
    assert out.choices[0].message.content == expected and out.usage.total_tokens > 0
    stream = oai.chat.completions.create(model="tiny-rgpt", messages=messages, temperature=0, max_tokens=8,
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    from openai import BadRequestError
    with pytest.raises(BadRequestError, match="outside the 451x300 image"):
        oai.chat.completions.create(model="tiny-rgpt", max_tokens=4, messages=[
            user(image_part(photo), "Describe", region({"box": [0, 0, 900, 10]}))])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=16)
part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "region", "image_url", "audio"])}, optional={
        "text": json_values, "region": json_values, "image_url": json_values}),
    json_values)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"])},
                                optional={"content": st.one_of(st.text(max_size=20), st.lists(part, max_size=3),
                                                               json_values)})
body = st.one_of(json_values, st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}, optional={
    "model": json_values, "temperature": json_values, "top_p": json_values, "max_tokens": json_values,
    "n": json_values, "stop": json_values, "seed": json_values, "stream": json_values, "per_region": json_values,
    "logprobs": json_values, "stream_options": json_values}))


def _never_a_500(client, payload):
    if isinstance(payload, dict):
        payload.setdefault("max_tokens", 2)    # a request that happens to be valid answers briefly
    # json.dumps writes NaN / Infinity as Python's json (and so the server's parser) reads them
    r = client.post("/v1/chat/completions", content=json.dumps(payload), headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404), (r.status_code, r.text[:300])
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body)
def test_generated_malformed_requests_never_get_a_500(client, payload):
    _never_a_500(client, payload)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(body)
def test_generated_malformed_requests_never_get_a_500_thousands(client, payload):
    _never_a_500(client, payload)
