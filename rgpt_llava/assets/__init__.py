"""Files the package needs at run time, shipped with it (a clone or an installed wheel needs nothing else).

``llama_tokenizer/``: the LLaMA / Vicuna SentencePiece tokenizer (32,000 pieces, ``<unk>``=0, ``<s>``=1, ``</s>``=2,
byte fallback; ``tokenizer_config.json`` as Vicuna v1.5's). It is what a real RegionGPT checkpoint tokenises with, so
the tiny models of the demo and the tests speak the same ids. Provenance: ``llama_tokenizer/README.md``.
"""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
LLAMA_TOKENIZER = ASSETS / "llama_tokenizer"
LLAMA_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


class MissingAssetError(FileNotFoundError):
    pass


def llama_tokenizer_dir() -> Path:
    """The shipped LLaMA tokenizer folder; an error naming the missing file (never a silent substitute)."""
    for name in LLAMA_TOKENIZER_FILES:
        if not (LLAMA_TOKENIZER / name).is_file():
            raise MissingAssetError(f"the package's LLaMA tokenizer is incomplete: {LLAMA_TOKENIZER / name} is "
                                    f"missing (reinstall rgpt_llava, or restore it with git checkout)")
    return LLAMA_TOKENIZER
