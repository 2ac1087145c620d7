"""HumanEval generation pipeline: prompts, argument checks, and an end-to-end run on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import make_tiny_checkpoint

from eval.codex_humaneval.run_eval import build_parser, build_prompt, main
from eval.common import EvalError, cli_main
from eval.templates import resolve_chat_formatter

PROBLEMS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "humaneval" / "problems.jsonl"
PROMPT = "def f(x):\n    \"\"\"Double x.\"\"\"\n"


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_prompts_plain_and_chat():
    assert build_prompt({"prompt": PROMPT}, None) == PROMPT
    chat = build_prompt({"prompt": PROMPT}, resolve_chat_formatter("tulu"))
    assert chat == ("<|user|>\nComplete the following python function.\n\n\n" + PROMPT + "\n<|assistant|>\n"
                    "Here is the completed function:\n\n\n" + PROMPT)


def test_defaults_match_open_instruct():
    args = parse("--model_name_or_path", "m")
    assert args.data_file == "data/eval/codex_humaneval/HumanEval.jsonl.gz"
    assert (args.eval_pass_at_ks, args.unbiased_sampling_size_n, args.temperature) == ([1], 20, 0.1)
    assert (args.timeout, args.chat_formatting_function, args.eval_batch_size) == (3.0, "tulu", 1)


def test_refusals_come_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    model_dir = tmp_path / "unloaded_model"  # a folder that passes the path check but holds no weights
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    model = str(model_dir)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(main, build_parser(), ["--model_name_or_path", model, "--save_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: refusing to execute model-generated code")
    with pytest.raises(EvalError, match=r"--unbiased_sampling_size_n 5 must be >= the largest k"):
        main(parse("--model_name_or_path", model, "--eval_pass_at_ks", "1", "10", "--unbiased_sampling_size_n", "5",
                   "--allow_code_execution"))
    with pytest.raises(EvalError, match="--temperature 0.0: must be > 0"):
        main(parse("--model_name_or_path", model, "--temperature", "0", "--allow_code_execution"))
    with pytest.raises(EvalError, match=r"HumanEval data not found: .*missing\.jsonl\.gz; run .*prepare_eval_data\.sh"
                                        r".*--offline"):
        main(parse("--model_name_or_path", model, "--data_file", str(tmp_path / "missing.jsonl.gz"),
                   "--allow_code_execution"))
    assert not (tmp_path / "o").exists()


def test_end_to_end_tiny_model(tmp_path):
    torch.set_num_threads(1)
    model_dir = make_tiny_checkpoint(tmp_path / "model")
    save_dir = tmp_path / "out"
    metrics = main(parse("--model_name_or_path", str(model_dir), "--data_file", str(PROBLEMS_FILE),
                         "--save_dir", str(save_dir), "--max_num_examples", "2", "--unbiased_sampling_size_n", "2",
                         "--eval_pass_at_ks", "1", "2", "--eval_batch_size", "2", "--use_chat_format",
                         "--n_workers", "2", "--allow_code_execution"))
    assert sorted(p.name for p in save_dir.iterdir()) == ["codex_eval_predictions.jsonl",
                                                          "codex_eval_predictions.jsonl_results.jsonl", "metrics.json"]
    problems = {json.loads(line)["task_id"]: json.loads(line) for line in PROBLEMS_FILE.read_text().splitlines()}
    predictions = [json.loads(line) for line in (save_dir / "codex_eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and len({p["task_id"] for p in predictions}) == 2
    for row in predictions:
        assert set(row) == {"task_id", "prompt", "completion"}
        assert row["prompt"] == problems[row["task_id"]]["prompt"]
        assert not any(stop in row["completion"] for stop in ["\nclass", "\ndef", "\n#", "\nif", "\nprint"])
    results = [json.loads(line) for line in
               (save_dir / "codex_eval_predictions.jsonl_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion"]) for r in results] == [(p["task_id"], p["completion"]) for p in predictions]
    assert all(isinstance(r["passed"], bool) and r["result"] for r in results)
    assert json.loads((save_dir / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"pass@1", "pass@2"} and all(0.0 <= v <= 1.0 for v in metrics.values())
