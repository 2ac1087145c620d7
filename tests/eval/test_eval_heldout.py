"""`eval.heldout`: held-out conversations asked in the training chat format, scored by number or by text."""

from __future__ import annotations

import json
import re

import pytest
import torch

from eval.common import cli_main
from eval.heldout import run_eval as heldout
from eval.templates import create_prompt_with_tulu_chat_format

CONVERSATIONS = [
    {"id": "m1", "messages": [{"role": "user", "content": "Tom has 3 boxes of 4 pens. How many pens?"},
                              {"role": "assistant", "content": "The answer is 12."}]},
    {"id": "m2", "messages": [{"role": "user", "content": "Mia had 10 and lost 1. How many are left?"},
                              {"role": "assistant", "content": "The answer is 9."}]},
    {"id": "m3", "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What is 1,000 + 500?"},
                              {"role": "assistant", "content": "The answer is 1,500."}]},
]
ANSWERS = {"Tom has": "The answer is 12.", "Mia had": "It is 8.", "1,000 + 500": "1500"}


class Scripted:
    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.calls = tokenizer, answers, []

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, n=1, stop=None, batch_size=1):
        self.calls.append((prompts, stop))
        return [[next(a for k, a in self.answers.items() if k in p)] for p in prompts]


def write(tmp_path, rows) -> str:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, data_file, *extra):
    save_dir = tmp_path / "out"
    cli_main(heldout.main, heldout.build_parser(), ["--data_file", data_file, "--save_dir", str(save_dir),
                                                    "--model_name_or_path", "unused", *extra])
    return save_dir, json.loads((save_dir / "metrics.json").read_text())


@pytest.fixture
def scripted(monkeypatch, smollm2_tokenizer):
    def install(answers):
        fake = Scripted(smollm2_tokenizer, answers)
        monkeypatch.setattr("eval.backends.make_backend", lambda args: fake)
        return fake
    return install


def test_number_answers_and_training_format_prompts(tmp_path, scripted):
    fake = scripted(ANSWERS)
    save_dir, metrics = run(tmp_path, write(tmp_path, CONVERSATIONS), "--answer", "number", "--use_chat_format")
    assert metrics == {"accuracy": pytest.approx(2 / 3), "num_examples": 3}
    prompts, stop = fake.calls[0]
    assert stop == ["\n"]
    # every message but the answer, in the tulu format finetune trains on, ending with the assistant tag
    assert prompts == [create_prompt_with_tulu_chat_format(c["messages"][:-1]) for c in CONVERSATIONS]
    assert prompts[2].startswith("<|system|>\nBe brief.\n") and prompts[2].endswith("<|assistant|>\n")
    rows = [json.loads(line) for line in (save_dir / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["correct"]) for r in rows] == [("m1", True), ("m2", False), ("m3", True)]


def test_without_chat_format_the_prompt_is_plain_text(tmp_path, scripted):
    fake = scripted(ANSWERS)
    _, metrics = run(tmp_path, write(tmp_path, CONVERSATIONS), "--answer", "number")
    assert metrics == {"accuracy": pytest.approx(2 / 3), "num_examples": 3}
    prompts, stop = fake.calls[0]
    assert stop == ["\n"]
    assert prompts[0] == "Tom has 3 boxes of 4 pens. How many pens?\n"
    assert prompts[2] == "Be brief.\n\nWhat is 1,000 + 500?\n"
    assert not any("<|" in p for p in prompts)  # no chat tags of any format
    # --chat_formatting_function alone changes nothing: the format is asked for with --use_chat_format
    run(tmp_path, write(tmp_path, CONVERSATIONS), "--answer", "number", "--chat_formatting_function", "zephyr")
    assert fake.calls[1][0] == prompts
    run(tmp_path, write(tmp_path, CONVERSATIONS), "--answer", "number", "--use_chat_format",
        "--chat_formatting_function", "zephyr")
    assert fake.calls[2][0] != prompts and all(p.rstrip().endswith("<|assistant|>") for p in fake.calls[2][0])


def test_text_answers_ignore_case_and_punctuation(tmp_path, scripted):
    rows = [{"id": f"b{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": gold}]}
            for i, (q, gold) in enumerate([("pick one: x", "(B)"), ("sort: y", "apple pear"), ("tf: z", "True")])]
    scripted({"pick one": "(b).", "sort": "apple  pear", "tf": "true"})
    _, metrics = run(tmp_path, write(tmp_path, rows), "--answer", "text")
    # whitespace is not normalised (as BBH's exact match): "apple  pear" is wrong
    assert metrics == {"accuracy": pytest.approx(2 / 3), "num_examples": 3}


def test_subset_is_seeded_and_capped(tmp_path, scripted):
    many = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Tom has {i}"},
                                         {"role": "assistant", "content": "12"}]} for i in range(20)]
    fake = scripted({"Tom has": "12"})
    data = write(tmp_path, many)
    _, first = run(tmp_path, data, "--max_num_examples", "5", "--use_chat_format")
    _, again = run(tmp_path, data, "--max_num_examples", "5", "--use_chat_format")
    assert first["num_examples"] == 5 and fake.calls[0][0] == fake.calls[1][0]
    assert fake.calls[0][0] != [create_prompt_with_tulu_chat_format(c["messages"][:-1]) for c in many[:5]]


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "at least two messages"),
    ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}', "from the assistant"),
    ('{"text": "no messages"}', "expected {'messages'"),
    ("not json", "heldout.jsonl:1"),
])
def test_bad_rows_are_one_line_errors(tmp_path, capsys, line, message):
    path = tmp_path / "heldout.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, str(path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.match(r"error: .*heldout\.jsonl:1", err) and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_end_to_end_on_tiny_model(tmp_path, tiny_model_dir):
    torch.set_num_threads(1)
    save_dir, metrics = run(tmp_path, write(tmp_path, CONVERSATIONS), "--model_name_or_path", str(tiny_model_dir),
                            "--max_new_tokens", "4", "--eval_batch_size", "2")
    assert set(metrics) == {"accuracy", "num_examples"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert len((save_dir / "predictions.jsonl").read_text().splitlines()) == 3
