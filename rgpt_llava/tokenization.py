"""LLaVA-1.5's tokenisation on every supported transformers: ``load_tokenizer``.

LLaVA-1.5 (Vicuna) is trained and served with transformers' SentencePiece ("slow") ``LlamaTokenizer``, which LLaVA
loads with ``AutoTokenizer.from_pretrained(path, use_fast=False)``. transformers 5 no longer has that class: its
``LlamaTokenizer`` is tokenizers-backed and ignores ``use_fast``, and it encodes some text differently -- a text chunk
that starts with a space loses the ``▁`` piece (29871) that LLaVA's ``tokenizer_image_token`` and RGPT's
``tokenizer_region_token`` put after every placeholder (``" describes"`` -> ``[16612]``, not ``[29871, 16612]``),
and runs of spaces split otherwise (``"  two"`` -> ``[259, 10184]``, not ``[259, 1023]``). Decoding differs too.

``load_tokenizer(path)`` is the one place a LLaMA-family tokenizer is loaded (RGPT's builder, conversion, training
through LLaVA's ``train()``, and LLaVA's own builder where ``patches/`` carry LLaVA to 5.x): on transformers 4.x
it is LLaVA's call as is; on 5.x a SentencePiece LLaMA vocabulary (``tokenizer.model``, ``tokenizer_class``
``LlamaTokenizer``) loads as ``LlavaLlamaTokenizer`` -- the slow tokenizer's algorithm (transformers 4.37.2's
``LlamaTokenizer``: ``legacy`` prefix handling, BOS/EOS, decoding) on transformers 5's SentencePiece backend -- so
the same checkpoint and text give the same ids and the same decoded answers on every stack
(``tests/test_token_ids.py`` against ids recorded on the pinned stack). Any other tokenizer (a BPE vocabulary with no
``tokenizer.model``) loads through ``AutoTokenizer`` unchanged.
"""
import json
import logging
import os
from typing import List, Optional

from transformers import AutoTokenizer

from rgpt_llava.compat import TRANSFORMERS_MAJOR

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"
SENTENCEPIECE_FILE = "tokenizer.model"
# The tokenizer classes LLaVA-1.5-family checkpoints name in tokenizer_config.json (the slow and the fast name).
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def _tokenizer_config(path: str) -> dict:
    config_file = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(config_file):
        return {}
    with open(config_file) as f:
        return json.load(f)


def is_sentencepiece_llama(path: str) -> bool:
    """Whether ``path`` holds a SentencePiece LLaMA vocabulary (what LLaVA-1.5 loads as the slow LlamaTokenizer)."""
    return (os.path.isfile(os.path.join(path, SENTENCEPIECE_FILE))
            and _tokenizer_config(path).get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES)


def load_tokenizer(path: str, **kwargs):
    """The tokenizer LLaVA-1.5 uses for the checkpoint or tokenizer folder ``path``, on any supported transformers.

    ``kwargs`` go to ``from_pretrained`` (``model_max_length``, ``padding_side``, ...), as in LLaVA's calls.
    """
    kwargs.pop("use_fast", None)  # always LLaVA's choice, the SentencePiece tokenizer
    if TRANSFORMERS_MAJOR >= 5 and os.path.isdir(path):
        if is_sentencepiece_llama(path):
            return LlavaLlamaTokenizer.from_pretrained(path, **kwargs)
        if _tokenizer_config(path).get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES:
            logger.warning(f"{path}: a LLaMA tokenizer without {SENTENCEPIECE_FILE}; transformers 5 encodes it with "
                           f"tokenizers, whose ids differ from LLaVA-1.5's SentencePiece ids for some text")
    return AutoTokenizer.from_pretrained(path, use_fast=False, **kwargs)


if TRANSFORMERS_MAJOR >= 5:
    from transformers import AddedToken
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class LlavaLlamaTokenizer(SentencePieceBackend):
        """transformers 4.37.2's SentencePiece ``LlamaTokenizer`` (the one LLaVA-1.5 is trained with) on
        transformers 5's SentencePiece backend, which already has its ``_tokenize`` (the ``legacy=False`` unk-prefix
        trick) and its special-token splitting. Saved as ``LlamaTokenizer`` with its ``tokenizer.model``, so every
        stack loads what it saves."""

        model_input_names = ["input_ids", "attention_mask"]

        def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                     sp_model_kwargs=None, add_bos_token=True, add_eos_token=False,
                     clean_up_tokenization_spaces=False, use_default_system_prompt=False,
                     spaces_between_special_tokens=False, legacy=None, **kwargs):
            special = {name: AddedToken(tok, normalized=False, special=True) if isinstance(tok, str) else tok
                       for name, tok in (("unk_token", unk_token), ("bos_token", bos_token),
                                         ("eos_token", eos_token), ("pad_token", pad_token))}
            # transformers 4.37: no `legacy` in the config means the legacy behaviour
            legacy = True if legacy is None else legacy
            self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
            self.use_default_system_prompt = use_default_system_prompt
            for key in ("backend", "add_prefix_space", "extra_special_tokens", "special_tokens_pattern"):
                kwargs.pop(key, None)  # what transformers 5's own LlamaTokenizer saved, if it saved this folder
            super().__init__(vocab_file=vocab_file, sp_model_kwargs=sp_model_kwargs or {}, legacy=legacy,
                             add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                             clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                             use_default_system_prompt=use_default_system_prompt,
                             spaces_between_special_tokens=spaces_between_special_tokens, **special, **kwargs)

        @property
        def unk_token_length(self) -> int:
            return len(self.sp_model.encode(str(self.unk_token)))

        def tokenize(self, text, **kwargs) -> List[str]:
            # 4.37's LlamaTokenizer.tokenize: with legacy=False the whole text gets one "▁" (the dummy prefix the
            # SentencePiece model's own normaliser is stopped from adding), dropped again before a special token.
            if self.legacy or len(text) == 0:
                return super().tokenize(text, **kwargs)
            tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
            if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
                tokens = tokens[1:]
            return tokens

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            output = bos + token_ids_0 + eos
            if token_ids_1 is not None:
                output = output + bos + token_ids_1 + eos
            return output

        def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
            if already_has_special_tokens:
                return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
            bos = [1] if self.add_bos_token else []
            eos = [1] if self.add_eos_token else []
            mask = bos + [0] * len(token_ids_0) + eos
            if token_ids_1 is not None:
                mask = mask + bos + [0] * len(token_ids_1) + eos
            return mask

        def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            output = [0] * len(bos + token_ids_0 + eos)
            if token_ids_1 is not None:
                output += [1] * len(bos + token_ids_1 + eos)
            return output

        def convert_tokens_to_string(self, tokens: List[str]) -> str:
            # 4.37's: the prefix space added when encoding is removed; special tokens are not decoded by
            # SentencePiece (legacy tokenizers put a space before them).
            if tokens and tokens[0].startswith(SPIECE_UNDERLINE):
                tokens = [tokens[0][1:]] + list(tokens[1:])
            out, pieces, prev_special = "", [], False
            specials = set(self.all_special_tokens)
            for i, token in enumerate(tokens):
                if token in specials:
                    if not prev_special and i != 0 and self.legacy:
                        out += " "
                    out += self.sp_model.decode(pieces) + token
                    prev_special, pieces = True, []
                else:
                    pieces.append(token)
                    prev_special = False
            return out + self.sp_model.decode(pieces)

        def _decode(self, token_ids, skip_special_tokens: bool = False,
                    clean_up_tokenization_spaces: Optional[bool] = None, spaces_between_special_tokens: bool = True,
                    **kwargs) -> str:
            # 4.37's PreTrainedTokenizer._decode: added tokens that are not special are joined as whole strings.
            if isinstance(token_ids, int):
                token_ids = [token_ids]
            tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
            specials = set(self.all_special_tokens)
            plain_added = set(self._added_tokens_encoder) - specials
            texts, current = [], []
            for token in tokens:
                if token in plain_added:
                    if current:
                        text = self.convert_tokens_to_string(current)
                        if text:
                            texts.append(text)
                        current = []
                    texts.append(token)
                else:
                    current.append(token)
            if current:
                texts.append(self.convert_tokens_to_string(current))
            text = (" " if spaces_between_special_tokens else "").join(texts)
            clean = (self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None
                     else clean_up_tokenization_spaces)
            return self.clean_up_tokenization(text) if clean else text

        def save_pretrained(self, save_directory, *args, **kwargs):
            # Saved as the slow LlamaTokenizer of transformers 4.x, so 4.37, 4.57 and 5.x all load it as one.
            files = super().save_pretrained(save_directory, *args, **kwargs)
            config_file = os.path.join(save_directory, "tokenizer_config.json")
            with open(config_file) as f:
                config = json.load(f)
            config.update(tokenizer_class="LlamaTokenizer", legacy=self.legacy, add_bos_token=self.add_bos_token,
                          add_eos_token=self.add_eos_token)
            for key in ("backend", "extra_special_tokens", "is_local", "local_files_only", "add_prefix_space"):
                config.pop(key, None)
            with open(config_file, "w") as f:
                json.dump(config, f, indent=2, ensure_ascii=False)
            return files


# The SentencePiece LlamaTokenizer class on this stack: transformers' own on 4.x, ours on 5.x.
if TRANSFORMERS_MAJOR >= 5:
    SentencePieceLlamaTokenizer = LlavaLlamaTokenizer
else:
    from transformers import LlamaTokenizer as SentencePieceLlamaTokenizer  # noqa: F401  (exported)


class LlavaAutoTokenizer:
    """``AutoTokenizer`` for LLaVA's own code (``patches/0008`` puts it in LLaVA's builder and ``train()``):
    ``use_fast=False``, LLaVA's request for the SentencePiece tokenizer, means ``load_tokenizer`` -- LLaVA-1.5's ids
    on transformers 5 too; any other call is ``AutoTokenizer``'s."""

    @staticmethod
    def from_pretrained(path, *args, **kwargs):
        if kwargs.get("use_fast", True) is False and not args:
            return load_tokenizer(path, **kwargs)
        return AutoTokenizer.from_pretrained(path, *args, **kwargs)
