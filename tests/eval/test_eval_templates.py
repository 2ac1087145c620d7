"""Chat formats: exact strings for tulu/llama2/zephyr/xwin, the tokenizer's template, and name resolution."""

from __future__ import annotations

import pytest

from eval.templates import (
    chat_prompt,
    create_prompt_with_llama2_chat_format,
    create_prompt_with_tulu_chat_format,
    create_prompt_with_xwin_chat_format,
    create_prompt_with_zephyr_chat_format,
    resolve_chat_formatter,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi there \n"},
    {"role": "assistant", "content": "  Hello!  "},
    {"role": "user", "content": "Bye"},
]


def test_tulu_exact_format():
    assert create_prompt_with_tulu_chat_format(CONVERSATION) == (
        "<|system|>\nBe brief.\n<|user|>\n Hi there \n\n<|assistant|>\nHello!</s>\n<|user|>\nBye\n<|assistant|>\n")
    single = [{"role": "user", "content": "Q"}]
    assert create_prompt_with_tulu_chat_format(single) == "<|user|>\nQ\n<|assistant|>\n"
    assert create_prompt_with_tulu_chat_format(single, add_bos=True) == "<s><|user|>\nQ\n<|assistant|>\n"
    assistant_only = create_prompt_with_tulu_chat_format(CONVERSATION[2:3], eos="<E>")
    assert assistant_only == "<|assistant|>\nHello!<E>\n<|assistant|>\n"


def test_tulu_rejects_unknown_role():
    with pytest.raises(ValueError, match="'tool'"):
        create_prompt_with_tulu_chat_format([{"role": "tool", "content": "x"}])


def test_llama2_format():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": " U1 "},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    assert create_prompt_with_llama2_chat_format(messages, add_bos=True) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]")
    assert create_prompt_with_llama2_chat_format(messages) == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]")
    with pytest.raises(ValueError, match="system message"):
        create_prompt_with_llama2_chat_format([{"role": "system", "content": "S"}])


def test_zephyr_and_xwin_formats():
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "V"}]
    assert create_prompt_with_zephyr_chat_format(messages) == (
        "<|user|>\nU</s>\n<|assistant|>\nA</s>\n<|user|>\nV</s>\n<|assistant|>\n")
    assert create_prompt_with_xwin_chat_format(messages) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: U ASSISTANT: A</s>USER: V ASSISTANT:")


def test_resolve_short_names_and_dotted_paths(smollm2_tokenizer):
    messages = [{"role": "user", "content": "Q"}]
    assert resolve_chat_formatter("tulu")(messages) == "<|user|>\nQ\n<|assistant|>\n"
    dotted = resolve_chat_formatter("eval.templates.create_prompt_with_tulu_chat_format")
    assert dotted(messages) == "<|user|>\nQ\n<|assistant|>\n"
    own = resolve_chat_formatter("tokenizer", smollm2_tokenizer)(messages)
    expected = smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert own == expected and own.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nQ<|im_end|>" in own
    # A user function without a tokenizer parameter is called with add_bos only.
    xwin = resolve_chat_formatter("eval.templates.create_prompt_with_xwin_chat_format")
    assert xwin(messages).endswith("USER: Q ASSISTANT:")


@pytest.mark.parametrize("name", ["nope", "eval.templates.missing_fn", "no_such_module.fn"])
def test_resolve_bad_names(name):
    with pytest.raises(ValueError, match="chat"):
        resolve_chat_formatter(name)


def test_tokenizer_format_needs_a_template():
    with pytest.raises(ValueError, match="chat template"):
        resolve_chat_formatter("tokenizer", None)([{"role": "user", "content": "Q"}])


def test_chat_prompt_answer_prefix_spacing():
    tulu = resolve_chat_formatter("tulu")
    assert chat_prompt(tulu, "Q", "Answer:") == "<|user|>\nQ\n<|assistant|>\nAnswer:"
    xwin = resolve_chat_formatter("xwin")
    assert chat_prompt(xwin, "Q", "A:").endswith("ASSISTANT: A:")
    assert chat_prompt(tulu, "Q") == "<|user|>\nQ\n<|assistant|>\n"
