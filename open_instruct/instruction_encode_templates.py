"""Prompt templates that turn an (instruction, input, output) triple into one user turn and one assistant turn.

Instruction datasets (Alpaca, Dolly, SuperNI, ...) give a task description, an optional input and the expected
output. Training on a single fixed layout teaches a model that layout; open-instruct instead draws, per example,
one of a weighted set of phrasings, so the model sees the same kind of request written many ways. This module
holds our own template set in that spirit: one list for examples with an input and one for examples without.

Each template is ``(prompt_template, completion_template, weight)``; ``{instruction}``, ``{input}`` and
``{output}`` are filled with the stripped fields. Weights are relative (they need not sum to 1). The choice is
made with the caller's ``random.Random`` so a converter's output depends only on its own seed.
"""

from __future__ import annotations

import random
from typing import Sequence

Template = tuple[str, str, float]

# Templates for examples that come with an input (a passage, a sentence to transform, ...).
TEMPLATES_WITH_INPUT: list[Template] = [
    ("{instruction}\n\n{input}\n\n", "{output}", 0.20),
    ("{instruction}\n{input}\n\n", "{output}", 0.08),
    ("{instruction}\n{input}\n", "{output}", 0.08),
    ("{instruction}\n\nInput: {input}\n\nOutput:", "{output}", 0.06),
    ("{instruction}\nInput: {input}\nOutput:", "{output}", 0.06),
    ("{instruction}\n\nHere is the input:\n{input}\n\nYour answer:", "{output}", 0.05),
    ("{instruction}\n\nContext:\n{input}\n\nResponse:", "{output}", 0.05),
    ("Task: {instruction}\n\nInput: {input}\n\nAnswer:", "{output}", 0.05),
    ("Task description: {instruction}\n\n{input}\n\n", "{output}", 0.05),
    ("Please do the following. {instruction}\n\n{input}\n", "{output}", 0.05),
    ("{input}\n\nWith the text above in mind: {instruction}\n", "{output}", 0.05),
    ("Read the input and follow the instruction.\n\nInstruction: {instruction}\nInput: {input}\n\n", "{output}", 0.05),
    ("Instruction:\n{instruction}\n\nInput:\n{input}\n\nOutput:\n", "{output}", 0.05),
    (
        "Below is an instruction that describes a task, paired with an input that provides further context."
        " Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
        "{output}",
        0.12,
    ),  # the Alpaca layout, common enough in the wild to deserve a larger share
]

# Templates for examples whose instruction stands alone.
TEMPLATES_WITHOUT_INPUT: list[Template] = [
    ("{instruction}\n\n", "{output}", 0.20),
    ("{instruction}\n", "{output}", 0.10),
    ("{instruction}", "\n{output}", 0.08),
    ("{instruction}\nOutput:", "{output}", 0.05),
    ("{instruction}\n\nResponse:", "{output}", 0.05),
    ("{instruction}\n\nAnswer:", "{output}", 0.05),
    ("Task: {instruction}\n\n", "{output}", 0.05),
    ("Instruction: {instruction}\n", "{output}", 0.05),
    ("Instruction: {instruction}\nResponse:", "{output}", 0.05),
    ("Here is a request for you:\n\n{instruction}\n\n", "{output}", 0.05),
    ("Could you help me with the following?\n\n{instruction}\n", "{output}", 0.05),
    ("Respond to this request: {instruction}\nAnswer:", "{output}", 0.05),
    ("How would you answer the following?\n{instruction}\n", "{output}", 0.05),
    (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:",
        "{output}",
        0.12,
    ),  # the Alpaca layout without an input
]


def _pick(templates: Sequence[Template], rng: random.Random) -> Template:
    return rng.choices(templates, weights=[weight for _, _, weight in templates])[0]


def encode_instruction_example(instruction: str, input: str | None, output: str,
                               rng: random.Random) -> tuple[str, str]:
    """Return ``(prompt, completion)`` for one example, using a template drawn with ``rng``.

    An input that is missing or only whitespace counts as no input. The fields are stripped before they are
    put into the template; no end-of-sequence token is added (the training encoder appends it).
    """
    instruction, output = instruction.strip(), output.strip()
    input = (input or "").strip()
    if input:
        prompt_template, completion_template, _ = _pick(TEMPLATES_WITH_INPUT, rng)
        prompt = prompt_template.format(instruction=instruction, input=input)
    else:
        prompt_template, completion_template, _ = _pick(TEMPLATES_WITHOUT_INPUT, rng)
        prompt = prompt_template.format(instruction=instruction)
    return prompt, completion_template.format(output=output)


def encode_few_shot_example(instruction: str, demonstrations: Sequence[tuple[str, str]], input: str,
                            output: str) -> tuple[str, str]:
    """Return ``(prompt, completion)`` for an in-context example: the instruction, worked demos, then the query.

    The layout is fixed (no template draw), ``Input:``/``Output:`` blocks separated by blank lines::

        {instruction}

        Input:
        {demo input}
        Output:
        {demo output}

        Input:
        {input}
        Output:
    """
    parts = [instruction.strip() + "\n\n"]
    for demo_input, demo_output in demonstrations:
        parts.append(f"Input:\n{demo_input.strip()}\nOutput:\n{demo_output.strip()}\n\n")
    parts.append(f"Input:\n{input.strip()}\nOutput:\n")
    return "".join(parts), output.strip()
