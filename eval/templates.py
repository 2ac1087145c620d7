"""Chat formats that turn a list of messages into one prompt string for generation or scoring.

Every eval builds its task text, wraps it as a single user turn with one of these functions and, for
some tasks, appends an answer prefix ("Answer:", "A:", ...) after the assistant header. The formats:

* ``tulu`` — open-instruct's training format (what our fine-tuned models see)::

      <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant.strip()}{eos}\\n ... <|assistant|>\\n

  User and system text are kept verbatim; the prompt always ends with the generation header
  ``<|assistant|>\\n``; ``bos`` is prepended only when ``add_bos`` (evals pass ``add_bos=False`` and let the
  tokenizer or vLLM add BOS when tokenising).
* ``llama2`` — Llama-2-chat ``<s>[INST] <<SYS>>...<</SYS>> user [/INST] assistant </s>``.
* ``xwin`` — Vicuna-style "A chat between ... USER: ... ASSISTANT:".
* ``zephyr`` — like tulu, but an eos after every turn.
* ``tokenizer`` — the tokenizer's own chat template (``apply_chat_template`` with a generation prompt).

``--chat_formatting_function`` accepts a short name above or a dotted path ``package.module.function``
(e.g. the open-instruct default ``eval.templates.create_prompt_with_tulu_chat_format``) to any function with
the signature ``fn(messages, tokenizer=None, add_bos=False) -> str``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

Messages = list[dict[str, str]]


def _check_role(message: dict, allowed: tuple[str, ...], fmt: str) -> str:
    role = message.get("role")
    if role not in allowed:
        raise ValueError(f"{fmt} chat format supports roles {allowed}; got role {role!r}")
    return role


def create_prompt_with_tulu_chat_format(messages: Messages, tokenizer=None, bos: str = "<s>", eos: str = "</s>",
                                        add_bos: bool = False) -> str:
    """open-instruct's tulu format; ends with the assistant header so the model continues as the assistant."""
    text = ""
    for message in messages:
        role = _check_role(message, ("system", "user", "assistant"), "tulu")
        if role == "assistant":
            text += "<|assistant|>\n" + message["content"].strip() + eos + "\n"
        else:
            text += f"<|{role}|>\n" + message["content"] + "\n"
    text += "<|assistant|>\n"
    return bos + text if add_bos else text


def create_prompt_with_zephyr_chat_format(messages: Messages, tokenizer=None, bos: str = "<s>", eos: str = "</s>",
                                          add_bos: bool = False) -> str:
    """Zephyr: the tulu headers with an eos closing every turn (no stripping)."""
    text = ""
    for message in messages:
        role = _check_role(message, ("system", "user", "assistant"), "zephyr")
        text += f"<|{role}|>\n" + message["content"] + eos + "\n"
    text += "<|assistant|>\n"
    return bos + text if add_bos else text


def create_prompt_with_llama2_chat_format(messages: Messages, tokenizer=None, bos: str = "<s>", eos: str = "</s>",
                                          add_bos: bool = False) -> str:
    """Llama-2-chat: each user turn is ``bos[INST] text [/INST]``; a leading system message is folded into the
    first user turn between ``<<SYS>>`` markers. Without ``add_bos`` only the very first bos is dropped."""
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError("llama2 chat format: a system message must be followed by a user message")
        folded = "<<SYS>>\n" + messages[0]["content"] + "\n<</SYS>>\n\n" + messages[1]["content"]
        messages = [{"role": "user", "content": folded}] + list(messages[2:])
    text = ""
    for message in messages:
        role = _check_role(message, ("user", "assistant"), "llama2")
        if role == "user":
            text += bos + "[INST] " + message["content"].strip() + " [/INST]"
        else:
            text += " " + message["content"] + " " + eos
    if not add_bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def create_prompt_with_xwin_chat_format(messages: Messages, tokenizer=None, bos: str = "<s>", eos: str = "</s>",
                                        add_bos: bool = False) -> str:
    """Xwin-LM / Vicuna v1.1 style: fixed system sentence, then ``USER: ... ASSISTANT: ...``."""
    text = ("A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions. ")
    for message in messages:
        role = _check_role(message, ("user", "assistant"), "xwin")
        if role == "user":
            text += "USER: " + message["content"] + " "
        else:
            text += "ASSISTANT: " + message["content"] + eos
    text += "ASSISTANT:"
    return bos + text if add_bos else text


def create_prompt_with_huggingface_tokenizer_template(messages: Messages, tokenizer=None,
                                                      add_bos: bool = False) -> str:
    """The tokenizer's own chat template (e.g. ChatML for SmolLM2), with the generation prompt appended."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat format 'tokenizer' needs a tokenizer that defines a chat template")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.bos_token + text if add_bos and tokenizer.bos_token else text


CHAT_FORMATS: dict[str, Callable[..., str]] = {
    "tulu": create_prompt_with_tulu_chat_format,
    "llama2": create_prompt_with_llama2_chat_format,
    "xwin": create_prompt_with_xwin_chat_format,
    "zephyr": create_prompt_with_zephyr_chat_format,
    "tokenizer": create_prompt_with_huggingface_tokenizer_template,
}


def resolve_chat_formatter(name: str, tokenizer=None) -> Callable[[Messages], str]:
    """Return ``messages -> prompt`` for a short name (``tulu``, ``tokenizer``, ...) or a dotted ``module.fn``.

    The tokenizer is bound when the function accepts one; the prompt never carries bos (``add_bos=False``).
    """
    if name in CHAT_FORMATS:
        fn = CHAT_FORMATS[name]
    else:
        module_name, _, fn_name = name.rpartition(".")
        if not module_name:
            raise ValueError(f"unknown chat format {name!r}: use one of {sorted(CHAT_FORMATS)} or a dotted path "
                             "module.function")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import chat formatting function {name!r}: {err}") from None
    takes_tokenizer = "tokenizer" in inspect.signature(fn).parameters

    def format_messages(messages: Messages) -> str:
        if takes_tokenizer:
            return fn(messages, tokenizer=tokenizer, add_bos=False)
        return fn(messages, add_bos=False)

    return format_messages


def chat_prompt(formatter: Callable[[Messages], str], user_text: str, answer_prefix: str = "") -> str:
    """One user turn in chat format, followed by ``answer_prefix`` (separated by a space unless the formatted
    prompt already ends in whitespace — the rule every open-instruct eval uses)."""
    prompt = formatter([{"role": "user", "content": user_text}])
    if not answer_prefix:
        return prompt
    return prompt + answer_prefix if prompt[-1:] in ("\n", " ") else prompt + " " + answer_prefix
