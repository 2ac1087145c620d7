"""Tulu encoding and label masking (spec §3.2): only assistant replies and their EOS are trained on."""

from __future__ import annotations

import pytest
from finetune_helpers import byte_tokenizer

from open_instruct.data.encoding import (
    IGNORE_INDEX,
    encode_messages,
    encode_prompt_completion,
    encode_record,
    has_trainable_tokens,
    render_messages,
)

CONVERSATION = [
    {"role": "system", "content": " add numbers "},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4\n"},
    {"role": "user", "content": "3+6?"},
    {"role": "assistant", "content": "9"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()  # one token per byte, so token positions are character positions


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])


def test_render_is_the_tulu_layout():
    assert render_messages(CONVERSATION, "</s>") == (
        "<|system|>\nadd numbers\n<|user|>\n2+2?\n<|assistant|>\n4</s>\n<|user|>\n3+6?\n<|assistant|>\n9</s>\n")


def test_only_assistant_turns_and_eos_are_trained(tokenizer):
    example = encode_messages(CONVERSATION, tokenizer, max_seq_length=512)
    text = render_messages(CONVERSATION, "</s>").strip()
    assert tokenizer.decode(example["input_ids"]) == "<s>" + text
    assert len(example["labels"]) == len(example["input_ids"]) == len(example["attention_mask"])
    # The first reply's trailing newline belongs to its message; headers are never trained.
    assert trained_text(tokenizer, example) == "4</s>\n9</s>"
    first = example["labels"].index(next(label for label in example["labels"] if label != IGNORE_INDEX))
    assert tokenizer.decode(example["input_ids"][:first]).endswith("<|assistant|>\n")


def test_truncation_keeps_masks_aligned(tokenizer):
    full = encode_messages(CONVERSATION, tokenizer, max_seq_length=512)
    cut = len(full["input_ids"]) - 1  # cuts the final EOS off the last reply
    short = encode_messages(CONVERSATION, tokenizer, max_seq_length=cut)
    assert short["input_ids"] == full["input_ids"][:cut]
    assert short["labels"] == full["labels"][:cut]
    assert trained_text(byte_tokenizer(), short) == "4</s>\n9"


def test_reply_cut_off_entirely_leaves_nothing_to_train(tokenizer):
    messages = [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]
    example = encode_messages(messages, tokenizer, max_seq_length=40)
    assert len(example["input_ids"]) == 40 and not has_trainable_tokens(example)


@pytest.mark.parametrize("prompt, completion, text", [
    ("Q: 1+1", "2", "Q: 1+1 2</s>"),        # joined by one space
    ("Q: 1+1\n", "2", "Q: 1+1\n2</s>"),      # the prompt already ends in whitespace
    ("Q: 1+1", " 2", "Q: 1+1 2</s>"),        # the completion already starts with it
])
def test_prompt_completion(tokenizer, prompt, completion, text):
    example = encode_prompt_completion(prompt, completion, tokenizer, max_seq_length=64)
    assert tokenizer.decode(example["input_ids"]) == "<s>" + text
    # The prompt's own token length (BOS included) is masked; the rest, EOS included, is trained.
    assert trained_text(tokenizer, example) == text[len(prompt):]


def test_encode_record_dispatches_on_shape(tokenizer):
    assert encode_record({"messages": CONVERSATION, "prompt": None, "completion": None}, tokenizer, 512) == \
        encode_messages(CONVERSATION, tokenizer, 512)
    assert encode_record({"messages": None, "prompt": "a", "completion": "b"}, tokenizer, 512) == \
        encode_prompt_completion("a", "b", tokenizer, 512)


@pytest.mark.slow
def test_real_tokenizer_trains_on_the_replies(smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    example = encode_messages(CONVERSATION, tokenizer, max_seq_length=512)
    assert trained_text(tokenizer, example).replace(" ", "") == f"4{tokenizer.eos_token}\n9{tokenizer.eos_token}"
