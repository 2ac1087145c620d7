"""Prompt templates that turn an (instruction, input, output) triple into one user turn and one assistant turn.

Instruction datasets (Alpaca, Dolly, SuperNI, ...) give a task description, an optional input and the expected
output. Rather than one fixed layout, each example is phrased with a template drawn at random from a weighted set,
one set for examples with an input and one for examples without.

The strings and weights are open-instruct's (allenai/open-instruct at d61037f5, the PRoLoRA fork point), typo
included ("Plase"), and the draw is one ``rng.choices(templates, weights=...)`` call per example as there. They are
part of the training-data protocol: a different set, a different weight or a different number of draws would change
which template every later example gets. ``tests/test_reformat_upstream.py`` checks them against upstream's module.

Each template is ``(prompt_template, completion_template, weight)``; ``{instruction}``, ``{input}`` and ``{output}``
are filled with the stripped fields.
"""

from __future__ import annotations

import random
from typing import Sequence

Template = tuple[str, str, float]

TEMPLATES_WITH_INPUT: list[Template] = [
    ("{instruction}\n\n{input}\n\n", "{output}", 0.2),
    ("{instruction}\n{input}\n\n", "{output}", 0.1),
    ("{instruction}\n{input}\n", "{output}", 0.1),
    ("{instruction}\n\nInput: {input}\n\nOutput:", "{output}", 0.05),
    ("{instruction}\nInput: {input}\nOutput:", "{output}", 0.05),
    ("{instruction}\n{input}\n\nResponse:", "{output}", 0.05),
    ("{instruction}\n\nAdditional Context:\n{input}\n\nAnswer:", "{output}", 0.05),
    ("Task: {instruction}\nInput: {input}\nOutput:", "{output}", 0.05),
    ("Task: {instruction}\n\n{input}\n\n", "{output}", 0.05),
    ("Task: {instruction}\n\n{input}\n\nAnswer:", "{output}", 0.05),
    ("You need to complete the following task:\n\n{instruction}\n\n{input}\n\nAnswer:", "{output}", 0.05),
    ("{instruction}\n\nNow complete the following instance -\nInput: {input}\nOutput:", "{output}", 0.05),
    ("Instruction:{instruction}\n\nInput: {input}\n\n", "{output}", 0.05),
    ("Below is an instruction that describes a task, paired with an input that provides further context. "
     "Write a response that appropriately completes the request.\n\n"
     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:", "{output}", 0.1),  # Alpaca's
]

TEMPLATES_WITHOUT_INPUT: list[Template] = [
    ("{instruction}\n\n", "{output}", 0.2),
    ("{instruction}\n", "{output}", 0.1),
    ("{instruction}", "\n{output}", 0.1),
    ("{instruction} Output:", "{output}", 0.05),
    ("{instruction}\nResponse:", "{output}", 0.05),
    ("{instruction}\n\nAnswer:", "{output}", 0.05),
    ("Task: {instruction}\n\n", "{output}", 0.05),
    ("Instruction: {instruction}\n", "{output}", 0.05),
    ("Instruction: {instruction}\nOutput:", "{output}", 0.05),
    ("You need to complete the following task:\n\n{instruction}\n\n", "{output}", 0.05),
    ("Can you help with this?\n\n{instruction}\n", "{output}", 0.05),
    ("Plase answer the following request: {instruction}\nAnswer:", "{output}", 0.05),
    ("Tell me how would you respond to the following request.\n{instruction}\n", "{output}", 0.05),
    ("Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
     "### Response:", "{output}", 0.1),  # Alpaca's, without the input block
]


def _pick(templates: Sequence[Template], rng: random.Random) -> Template:
    return rng.choices(templates, weights=[weight for _, _, weight in templates])[0]


def has_input(input: str | None) -> bool:
    """An input that is missing or only whitespace counts as no input."""
    return input is not None and input.strip() != ""


def encode_instruction_example(instruction: str, input: str | None, output: str,
                               rng: random.Random | None) -> tuple[str, str]:
    """Return ``(prompt, completion)`` for one example, using one template drawn with ``rng``.

    With ``rng=None`` no template is drawn and the first layout of each set is used (instruction, blank line,
    input, blank line). The fields are stripped; no end-of-sequence token is added (the training encoder does).
    """
    instruction, output = instruction.strip(), output.strip()
    if rng is None:
        prompt_template, completion_template = ("{instruction}\n\n{input}\n\n" if has_input(input)
                                                else "{instruction}\n\n"), "{output}"
    else:
        prompt_template, completion_template, _ = _pick(
            TEMPLATES_WITH_INPUT if has_input(input) else TEMPLATES_WITHOUT_INPUT, rng)
    if has_input(input):
        prompt = prompt_template.format(instruction=instruction, input=input.strip())
    else:
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
