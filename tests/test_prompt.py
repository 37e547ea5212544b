"""rgpt_llava.prompt: the one prompt builder every entry uses."""
import pytest

from rgpt_llava.prompt import build_prompt, check_conv_mode, question_answer_prompt, roles, with_image

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def test_vicuna_v1_text_written_out():
    # LLaVA's vicuna_v1 (SeparatorStyle.TWO): system, " USER: q ASSISTANT: a</s>", open assistant turn at the end
    assert question_answer_prompt([("What is <region1>?", "A star."), ("And <region2>?", None)]) == (
        f"{SYSTEM} USER: <image>\nWhat is <region1>? ASSISTANT: A star.</s>USER: And <region2>? ASSISTANT:")
    assert build_prompt([("user", "hi")], system="Be brief.") == "Be brief. USER: hi ASSISTANT:"
    assert question_answer_prompt([("x", None)], image=False) == f"{SYSTEM} USER: x ASSISTANT:"
    assert roles("vicuna_v1") == ("USER", "ASSISTANT")


def test_image_placeholder_leads_once():
    assert with_image("what?") == "<image>\nwhat?"
    assert with_image("<image> what?") == "<image> what?"   # placed by the user: left where it is
    assert with_image("what?", "<im_start><image><im_end>") == "<im_start><image><im_end>\nwhat?"


def test_bad_template_role_and_turns():
    with pytest.raises(ValueError, match=r"'nope' is unknown; known: .*vicuna_v1"):
        check_conv_mode("nope")
    with pytest.raises(ValueError, match="role 'system'"):
        build_prompt([("system", "x")])
    with pytest.raises(ValueError, match="last turn's answer must be None"):
        question_answer_prompt([("q", "a")])
