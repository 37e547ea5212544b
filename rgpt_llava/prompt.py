"""The one prompt builder: a conversation rendered by LLaVA's conversation templates (``llava.conversation``).

Every entry renders its prompt here -- the CLI, evaluation generation, ``describe``, the OpenAI-compatible API, the
web page, RecapD -- so a template, a system prompt or the image placeholder is handled one way, and the ids
``tokenizer_region_token`` makes of the text are the same whichever entry asked.
"""
from typing import Optional, Sequence, Tuple

DEFAULT_CONV_MODE = "vicuna_v1"   # the template RGPT trains with (LLaVA-1.5's --version v1)
IMAGE_PLACEHOLDER = "<image>"     # llava.constants.DEFAULT_IMAGE_TOKEN


def conv_modes() -> list:
    from llava.conversation import conv_templates
    return sorted(conv_templates)


def check_conv_mode(conv_mode: str) -> str:
    """``conv_mode`` if it names one of LLaVA's templates; else a ValueError listing them (each entry names its flag
    or field in front of it)."""
    if conv_mode not in conv_modes():
        raise ValueError(f"{conv_mode!r} is unknown; known: {', '.join(conv_modes())}")
    return conv_mode


def roles(conv_mode: str) -> tuple:
    """The template's names for the user and the assistant (``("USER", "ASSISTANT")`` for vicuna_v1)."""
    from llava.conversation import conv_templates
    return tuple(conv_templates[check_conv_mode(conv_mode)].roles)


def with_image(text: str, image: str = IMAGE_PLACEHOLDER) -> str:
    """LLaVA's convention: the image placeholder leads the message that carries the image (unless it is placed)."""
    return text if IMAGE_PLACEHOLDER in text else f"{image}\n{text}"


def build_prompt(messages: Sequence[Tuple[str, Optional[str]]], conv_mode: str = DEFAULT_CONV_MODE,
                 system: Optional[str] = None) -> str:
    """The template's text for ``messages`` = [(role, text), ...] (role ``"user"`` or ``"assistant"``), ending with
    the assistant's open turn that generation fills. ``system`` replaces the template's system prompt."""
    from llava.conversation import conv_templates
    conv = conv_templates[check_conv_mode(conv_mode)].copy()
    if system is not None:
        conv.system = system
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
