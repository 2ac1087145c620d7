"""HumanEval scoring: the pass@k estimator, input validation, the opt-in, and the full canonical set."""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from eval.codex_humaneval import evaluate
from eval.codex_humaneval.evaluate import build_parser, estimate_pass_at_k, main, pass_at_k, read_problems
from eval.common import EvalError

PROBLEMS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "humaneval" / "problems.jsonl"
GOOD = {"Toy/0": "    return a + b\n", "Toy/1": "    return ' '.join(text.split(' ')[::-1])\n",
        "Toy/2": "    return sum(ch in 'aeiou' for ch in word)\n"}
BAD = {"Toy/0": "    return a - b\n", "Toy/1": "    return text\n", "Toy/2": "    return len(word)\n"}


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_cli(*argv: str) -> dict:
    return main(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),  # c/n
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (20, 0, 10, 0.0),
    (20, 20, 10, 1.0),
    (4, 1, 4, 1.0),  # n - c < k: every draw of 4 holds the correct one
    (1, 1, 1, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials_for_large_n():
    for n, c, k in [(200, 10, 100), (200, 1, 1), (150, 37, 10)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


def test_pass_at_k_averages_tasks_and_skips_k_above_n(caplog):
    with caplog.at_level(logging.WARNING):
        metrics = pass_at_k({"a": [True, False], "b": [False, False]}, [1, 2, 5])
    assert metrics == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
    assert "skipping pass@5" in caplog.text
    with pytest.raises(ValueError):
        estimate_pass_at_k(3, 4, 1)


def test_scoring_cli_mixed_samples(tmp_path):
    rows = [{"task_id": "Toy/0", "completion": GOOD["Toy/0"]}, {"task_id": "Toy/1", "completion": BAD["Toy/1"]},
            {"task_id": "Toy/0", "completion": BAD["Toy/0"]}, {"task_id": "Toy/1", "completion": BAD["Toy/1"]},
            {"task_id": "Toy/2", "completion": GOOD["Toy/2"]}, {"task_id": "Toy/2", "completion": GOOD["Toy/2"]}]
    samples = write_samples(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    metrics = run_cli("--data_file", str(PROBLEMS_FILE), "--samples_file", str(samples), "--save_dir", str(out),
                      "--eval_pass_at_ks", "1", "2", "3", "--n_workers", "2", "--allow_code_execution")
    # per task (n=2): Toy/0 c=1, Toy/1 c=0, Toy/2 c=2
    assert metrics == {"pass@1": pytest.approx((0.5 + 0 + 1) / 3), "pass@2": pytest.approx((1 + 0 + 1) / 3)}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    results = [json.loads(line) for line in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion"]) for r in results] == [(r["task_id"], r["completion"]) for r in rows]
    assert [r["passed"] for r in results] == [True, False, False, False, True, True]
    assert results[0]["result"] == "passed" and results[1]["result"] == "failed: AssertionError"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.jsonl_results.jsonl"]


def test_all_wrong_completions_fail(tmp_path):
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": t, "completion": c} for t, c in BAD.items()])
    metrics = run_cli("--data_file", str(PROBLEMS_FILE), "--samples_file", str(samples), "--save_dir",
                      str(tmp_path / "o"), "--n_workers", "2", "--allow_code_execution")
    assert metrics == {"pass@1": 0.0}


def test_refuses_without_opt_in(tmp_path, monkeypatch, capsys):
    from eval.common import cli_main

    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": "Toy/0", "completion": GOOD["Toy/0"]}])
    argv = ["--data_file", str(PROBLEMS_FILE), "--samples_file", str(samples), "--save_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(main, build_parser(), argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: refusing to execute model-generated code") and "\n" not in message
    assert "--allow_code_execution" in message and "HF_ALLOW_CODE_EVAL=1" in message
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")  # the environment variable is an opt-in too
    assert run_cli(*argv, "--n_workers", "1") == {"pass@1": 1.0}


def test_reads_gzipped_data_and_reports_bad_input(tmp_path):
    gz = tmp_path / "problems.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(PROBLEMS_FILE.read_text())
    assert read_problems(gz).keys() == read_problems(PROBLEMS_FILE).keys() == GOOD.keys()

    broken = tmp_path / "broken.jsonl"
    lines = PROBLEMS_FILE.read_text().splitlines()
    broken.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(EvalError, match=rf"{broken}:2: invalid JSON"):
        read_problems(broken)
    no_test = tmp_path / "no_test.jsonl"
    no_test.write_text(json.dumps({"task_id": "x", "prompt": "p", "entry_point": "f"}) + "\n")
    with pytest.raises(EvalError, match=rf"{no_test}:1: expected string field\(s\) test"):
        read_problems(no_test)
    with pytest.raises(EvalError, match="HumanEval data not found: .*prepare_eval_data.sh"):
        read_problems(tmp_path / "missing.jsonl.gz")

    out = tmp_path / "out"
    unknown = write_samples(tmp_path / "unknown.jsonl", [{"task_id": "Toy/0", "completion": GOOD["Toy/0"]},
                                                         {"task_id": "HumanEval/999", "completion": "pass"}])
    with pytest.raises(EvalError, match=r"task_id 'HumanEval/999', which is not in the data file"):
        run_cli("--data_file", str(PROBLEMS_FILE), "--samples_file", str(unknown), "--save_dir", str(out),
                "--allow_code_execution")
    bad_sample = tmp_path / "bad_sample.jsonl"
    bad_sample.write_text(json.dumps({"task_id": "Toy/0"}) + "\n")
    with pytest.raises(EvalError, match=rf"{bad_sample}:1: expected string field\(s\) completion"):
        run_cli("--data_file", str(PROBLEMS_FILE), "--samples_file", str(bad_sample), "--save_dir", str(out),
                "--allow_code_execution")
    assert not out.exists()  # nothing half-written


def test_canonical_solutions_of_all_164_problems_pass(tmp_path):
    from open_instruct.offline_assets import humaneval_data_file

    data_file = tmp_path / "HumanEval.jsonl.gz"
    shutil.copy(humaneval_data_file(), data_file)
    problems = read_problems(data_file)
    assert len(problems) == 164
    samples = write_samples(tmp_path / "canonical.jsonl", [{"task_id": task_id, "completion": p["canonical_solution"]}
                                                            for task_id, p in problems.items()])
    metrics = run_cli("--data_file", str(data_file), "--samples_file", str(samples), "--save_dir",
                      str(tmp_path / "out"), "--n_workers", str(evaluate.default_workers()), "--allow_code_execution")
    assert metrics == {"pass@1": 1.0}
    results = (tmp_path / "out" / "canonical.jsonl_results.jsonl").read_text().splitlines()
    assert len(results) == 164 and all(json.loads(r)["result"] == "passed" for r in results)
