"""scripts/prepare_eval_data.sh: argument handling and the --offline hand-off (no network used)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_eval_data.sh"


def run_script(tmp_path, *args):
    recorder = tmp_path / "fake_python"
    recorder.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/called"\n')
    recorder.chmod(0o755)
    env = dict(os.environ, PYTHON=str(recorder))
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_offline_mode_calls_the_offline_builder(tmp_path):
    proc = run_script(tmp_path, "--offline", "--bigbench", "--output_dir", "somewhere/eval")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "called").read_text().split() == ["-m", "open_instruct.offline_data", "eval", "--output_dir",
                                                         "somewhere/eval", "--bigbench"]
    proc = run_script(tmp_path, "--offline")
    assert (tmp_path / "called").read_text().split() == ["-m", "open_instruct.offline_data", "eval", "--output_dir",
                                                         "data/eval"]


def test_bad_arguments_are_rejected(tmp_path):
    proc = run_script(tmp_path, "--frobnicate")
    assert proc.returncode == 2 and "unknown argument '--frobnicate'" in proc.stderr
    proc = run_script(tmp_path, "--bigbench")
    assert proc.returncode == 2 and "--bigbench only applies with --offline" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_help_lists_the_sources(tmp_path):
    proc = run_script(tmp_path, "--help")
    assert proc.returncode == 0
    for url in ("hendrycks/data.tar", "BIG-Bench-Hard", "tydiqa", "grade-school-math", "human-eval"):
        assert url in proc.stdout
