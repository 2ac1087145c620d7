"""Turn one training record into `input_ids` / `labels` in the Tulu chat format used by open-instruct.

Two record shapes are accepted (see `open_instruct.data.validate` for the checks):

* ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` — rendered as::

      <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}</s>\\n ...

  (each content stripped, the whole string stripped, the tokenizer's own BOS prepended by tokenisation).
  Only assistant turns and the EOS that closes them are trained on: every system/user message, together
  with the ``<|assistant|>\\n`` header that follows it, gets label -100.
* ``{"prompt": str, "completion": str}`` — prompt and completion joined by one space (unless either side
  already has whitespace at the join), EOS appended; the prompt's tokens get label -100.

Everything is truncated to ``max_seq_length`` tokens. A span's boundaries are measured as the token length of
the rendered prefix, exactly as open-instruct does, so the masks match its data bit for bit.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
ROLE_HEADERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
ASSISTANT_HEADER = ROLE_HEADERS["assistant"]


def render_messages(messages: list[dict], eos_token: str) -> str:
    """The Tulu text of `messages` (not stripped): role header, stripped content, EOS after assistant turns."""
    parts = []
    for message in messages:
        end = eos_token + "\n" if message["role"] == "assistant" else "\n"
        parts.append(ROLE_HEADERS[message["role"]] + message["content"].strip() + end)
    return "".join(parts)


def _token_length(tokenizer, text: str, max_seq_length: int) -> int:
    return len(tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"])


def encode_messages(messages: list[dict], tokenizer, max_seq_length: int) -> dict[str, list[int]]:
    """Tokenise a conversation and mask everything that is not an assistant reply (see module docstring)."""
    text = render_messages(messages, tokenizer.eos_token).strip()
    input_ids = tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"]
    labels = list(input_ids)
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            continue
        start = 0 if index == 0 else _token_length(tokenizer, render_messages(messages[:index], tokenizer.eos_token),
                                                   max_seq_length)
        prefix = render_messages(messages[: index + 1], tokenizer.eos_token)
        if index + 1 < len(messages) and messages[index + 1]["role"] == "assistant":
            prefix += ASSISTANT_HEADER  # never train on the header that introduces the reply
        end = _token_length(tokenizer, prefix, max_seq_length)
        labels[start:end] = [IGNORE_INDEX] * (min(end, len(labels)) - min(start, len(labels)))
        if end >= max_seq_length:
            break
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def encode_prompt_completion(prompt: str, completion: str, tokenizer, max_seq_length: int) -> dict[str, list[int]]:
    """Tokenise prompt + completion + EOS and mask the prompt's tokens."""
    joined_by_space = not prompt.endswith((" ", "\n", "\t")) and not completion.startswith((" ", "\n", "\t"))
    text = prompt + (" " if joined_by_space else "") + completion + tokenizer.eos_token
    input_ids = tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"]
    prompt_length = _token_length(tokenizer, prompt, max_seq_length)
    labels = [IGNORE_INDEX] * min(prompt_length, len(input_ids)) + list(input_ids[prompt_length:])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def encode_record(record: dict[str, Any], tokenizer, max_seq_length: int) -> dict[str, list[int]]:
    """Encode a validated record of either shape; `messages` wins when both are present."""
    if record.get("messages"):
        return encode_messages(record["messages"], tokenizer, max_seq_length)
    return encode_prompt_completion(record["prompt"], record["completion"], tokenizer, max_seq_length)


def has_trainable_tokens(example: dict[str, list[int]]) -> bool:
    """False when truncation or masking left no label to learn from (such examples are dropped)."""
    return any(label != IGNORE_INDEX for label in example["labels"])
