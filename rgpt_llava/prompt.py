"""The one prompt builder: a conversation rendered by LLaVA's conversation templates (``llava.conversation``).

Every entry renders its prompt here -- the CLI, evaluation generation, ``describe``, the OpenAI-compatible API, the
web page, RecapD -- so a template, a system prompt or the image placeholder is handled one way, and the ids
``tokenizer_region_token`` makes of the text are the same whichever entry asked.
"""
import json
import os
from typing import Optional, Sequence, Tuple

DEFAULT_CONV_MODE = "vicuna_v1"   # the template RGPT trains with (LLaVA-1.5's --version v1)
IMAGE_PLACEHOLDER = "<image>"     # llava.constants.DEFAULT_IMAGE_TOKEN
# The config.json field in which a trained checkpoint names the template it was trained with (its --version).
CONV_MODE_FIELD = "conv_mode"
# ChatML (<|im_start|>role\n...<|im_end|>\n) as SmolLM2's and Qwen's own chat templates render it. LLaVA's
# chatml_direct has no newline after <|im_end|>, so its ids differ from what these LLMs were instruction-tuned on.
# Each system prompt is the one the LLM's template adds when a conversation has none.
CHATML_SYSTEMS = {
    "chatml": "You are a helpful assistant.",
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}


CHATML_SYSTEM_HEADER = "<|im_start|>system\n"


def _chatml(system: str):
    from llava.conversation import Conversation, SeparatorStyle
    # version "chatml": LLaVA's preprocess() has no labels for it; rgpt_llava.train.dataset masks it itself
    return Conversation(system=CHATML_SYSTEM_HEADER + system, roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
                        version="chatml", messages=(), offset=0, sep_style=SeparatorStyle.MPT, sep="<|im_end|>\n")


def conv_templates() -> dict:
    """LLaVA's ``conv_templates`` with RGPT's ChatML templates added (once, in place: LLaVA's ``train()`` looks its
    ``--version`` up there)."""
    from llava import conversation
    for name, system in CHATML_SYSTEMS.items():
        conversation.conv_templates.setdefault(name, _chatml(system))
    return conversation.conv_templates


def conv_modes() -> list:
    return sorted(conv_templates())


def checkpoint_conv_mode(model_path: Optional[str]) -> str:
    """The template a checkpoint was trained with (``conv_mode`` in its config.json, written by
    ``rgpt_llava.train.train``); LLaVA-1.5's ``vicuna_v1`` for checkpoints that do not say."""
    config = os.path.join(model_path or "", "config.json")
    if model_path and os.path.isfile(config):
        try:
            with open(config) as f:
                mode = json.load(f).get(CONV_MODE_FIELD)
        except (OSError, ValueError, AttributeError):
            mode = None  # the loader reports a broken config.json in its own words
        if isinstance(mode, str) and mode in conv_templates():
            return mode
    return DEFAULT_CONV_MODE


def conv_mode_for_llm(folder: str) -> str:
    """The template that suits a base LLM's own chat format, from its tokenizer_config.json's ``chat_template``:
    ``smollm2`` for SmolLM2's, ``chatml`` for any other ChatML one, else LLaVA-1.5's ``vicuna_v1``."""
    try:
        with open(os.path.join(folder, "tokenizer_config.json")) as f:
            template = json.load(f).get("chat_template") or ""
    except (OSError, ValueError, AttributeError):
        template = ""
    if not isinstance(template, str) or "<|im_start|>" not in template:
        return DEFAULT_CONV_MODE
    return "smollm2" if CHATML_SYSTEMS["smollm2"] in template else "chatml"


def resolve_conv_mode(conv_mode: Optional[str], model_path: Optional[str]) -> str:
    """``--conv-mode`` when given, else the checkpoint's own template."""
    return conv_mode if conv_mode is not None else checkpoint_conv_mode(model_path)


def check_conv_mode(conv_mode: str) -> str:
    """``conv_mode`` if it names one of LLaVA's templates; else a ValueError listing them (each entry names its flag
    or field in front of it)."""
    if conv_mode not in conv_modes():
        raise ValueError(f"{conv_mode!r} is unknown; known: {', '.join(conv_modes())}")
    return conv_mode


def roles(conv_mode: str) -> tuple:
    """The template's names for the user and the assistant (``("USER", "ASSISTANT")`` for vicuna_v1, ``("user",
    "assistant")`` for ChatML, whose role headers are ``<|im_start|>user\n``)."""
    return tuple(r.replace("<|im_start|>", "").strip() for r in conv_templates()[check_conv_mode(conv_mode)].roles)


def with_image(text: str, image: str = IMAGE_PLACEHOLDER) -> str:
    """LLaVA's convention: the image placeholder leads the message that carries the image (unless it is placed)."""
    return text if IMAGE_PLACEHOLDER in text else f"{image}\n{text}"


def build_prompt(messages: Sequence[Tuple[str, Optional[str]]], conv_mode: str = DEFAULT_CONV_MODE,
                 system: Optional[str] = None) -> str:
    """The template's text for ``messages`` = [(role, text), ...] (role ``"user"`` or ``"assistant"``), ending with
    the assistant's open turn that generation fills. ``system`` replaces the template's system prompt (in ChatML,
    the text of its system turn)."""
    conv = conv_templates()[check_conv_mode(conv_mode)].copy()
    if system is not None:
        conv.system = CHATML_SYSTEM_HEADER + system if conv.version == "chatml" else system
    for role, text in messages:
        if role not in ("user", "assistant"):
            raise ValueError(f"role {role!r}: expected 'user' or 'assistant'")
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def question_answer_prompt(turns: Sequence[Tuple[str, Optional[str]]], conv_mode: str = DEFAULT_CONV_MODE,
                           image: bool = True) -> str:
    """``turns`` = [(question, answer), ..., (question, None)]: earlier answers are history, the last is generated;
    with ``image`` the placeholder leads the first question."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        messages.append(("user", with_image(question) if image and i == 0 else question))
        if answer is not None:
            messages.append(("assistant", answer))
    if turns and turns[-1][1] is not None:
        raise ValueError("the last turn's answer must be None: it is the one generated")
    return build_prompt(messages, conv_mode)
