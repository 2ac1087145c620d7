"""Every command in the docs is run here or by a named test, and names scripts, modules and flags that exist.

The commands are the lines of every fenced ``bash`` / ``sh`` block in README.md, CONTRIBUTING.md and docs/**/*.md
(found afresh on each run, so a new page is checked the day it lands), continuation lines joined, comments dropped,
``a && b`` split, and a ``$(...)`` inside a line taken as a command of its own. For each command:

- it names what exists: a ``python -m X`` module resolves (its ``--help`` runs), a script file is there, a config
  or script path it names is there, and each ``--flag`` it passes (and each of a ``{a,b}`` / ``a|b`` list of
  choices) appears in the ``--help`` of the program it goes to (for a shell script: in the script's text);
- `HOW` says what runs it: `RUN` (short and safe: run here as written, in a scratch folder, with a time limit),
  `COLLECT` (a pytest selection: collected, not run), or the node id of the test that runs it, which must exist.
  A command that matches no entry fails the test: map it, or make it runnable.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = "run here"
COLLECT = "collect here"
CI_TEST = "tests/test_docs.py::test_ci_runs_setup_lint_and_every_test"

# Normalised command prefix → how it is checked (the longest matching prefix wins). Normalised: environment
# assignments dropped, `python` / `.venv/bin/python` written `python`, `.venv-vllm/bin/python` written `vllm-python`.
HOW = {
    # set-up, lint, the suite: what CI runs
    "bash scripts/setup.sh": CI_TEST,
    "bash scripts/test.sh": CI_TEST,
    ".venv/bin/ruff check .": CI_TEST,
    'python -m pytest -q -m "not slow and not vllm" tests': CI_TEST,
    "python -m pytest": COLLECT,
    "export HF_HUB_OFFLINE=1": RUN,
    "python scripts/demo.py": "tests/test_docs.py::test_demo_runs_small",
    # training, merging, the authors' launchers
    "python -m open_instruct.finetune": "tests/test_finetune_peft_methods.py::test_method_trains_and_prolora_merges",
    "accelerate launch --num_processes": "tests/test_finetune_distributed.py::test_two_processes_keep_adapters_in_sync",
    "accelerate launch --use_deepspeed":
        "tests/test_finetune_distributed.py::test_deepspeed_zero3_trains_saves_and_resumes",
    "accelerate launch --num_machines 2":
        "tests/test_finetune_distributed.py::test_two_machines_on_localhost_keep_adapters_in_sync",
    # multi-node ZeRO-3: its config and ZeRO-3 itself are tested in one process; several machines are not
    "accelerate launch --num_machines 2 --machine_rank $RANK --main_process_ip $MAIN_IP --main_process_port 29500 "
    "--num_processes 16 --use_deepspeed":
        "tests/test_finetune_distributed.py::test_deepspeed_zero3_trains_saves_and_resumes",
    "python -m open_instruct.merge_lora": "tests/test_merge_lora.py::test_merged_model_matches_base_plus_adapter",
    "./ft_llama2_7b_superni_mmlu.sh <LORA_RANK>": "tests/test_ft_scripts.py::test_wrong_argument_count_prints_usage",
    "./ft_llama2_7b_superni_mmlu.sh 8 1 2 2 1e-3 42 cpu":
        "tests/test_ft_scripts.py::test_superni_pipeline_trains_and_merges_a_tiny_model_on_cpu",
    "./ft_llama2_7b_": "tests/test_authors_command_lines.py::test_training_flags_parse_with_their_meaning",
    "python -m open_instruct.offline_assets --model": RUN,
    "docker ": "tests/test_docs.py::test_docker_commands_fit_the_dockerfile",
    # data
    "scripts/prepare_train_data.sh --datasets":
        "tests/test_reformat_datasets.py::test_prepare_script_converts_in_upstreams_order",
    "scripts/prepare_train_data.sh --offline": "tests/test_offline_data.py::test_asdiv_gsm_and_training_sets",
    "python -m open_instruct.reformat_datasets":
        "tests/test_reformat_datasets.py::test_cli_converts_requested_and_available_sources",
    "python -m open_instruct.validate_data": "tests/test_validate_data.py::test_stats_cli_with_the_real_tokenizer",
    # evals
    "bash scripts/prepare_eval_data.sh --offline":
        "tests/eval/test_eval_prepare_script.py::test_offline_mode_calls_the_offline_builder",
    "bash scripts/prepare_eval_data.sh": "tests/eval/test_eval_prepare_script.py::test_help_lists_the_sources",
    "python -m eval.mmlu.run_eval": "tests/eval/test_eval_run.py::test_mmlu_end_to_end",
    "python -m eval.gsm.run_eval": "tests/eval/test_eval_run.py::test_gsm_end_to_end",
    "python -m eval.bbh.run_eval": "tests/eval/test_eval_run.py::test_bbh_end_to_end",
    "python -m eval.tydiqa.run_eval": "tests/eval/test_eval_run.py::test_tydiqa_end_to_end",
    "python -m eval.codex_humaneval.run_eval": "tests/eval/test_humaneval_run_eval.py::test_end_to_end_tiny_model",
    "python -m eval.heldout.run_eval": "tests/eval/test_eval_heldout.py::test_end_to_end_on_tiny_model",
    "vllm-python -m eval.gsm.run_eval --use_vllm": "tests/test_serve.py::test_gsm_eval_with_use_vllm",
    # serving
    "python -m open_instruct.serve --base_model_name_or_path BASE --adapters math=out/math code=out/code -- ":
        "tests/test_serve.py::test_serve_mode_exports_into_a_content_cache_and_execs_vllm",
    "python -m open_instruct.serve": "tests/test_serve.py::test_offline_hf_mixed_batch_on_smollm2",
    "vllm-python -m open_instruct.serve": "tests/test_serve.py::test_vllm_mixed_batch_matches_hf_prolora",
    "curl http://localhost:8000/v1/completions": "tests/test_serve.py::test_vllm_serve_argv",
    # grids, parameter counts, tables, plots
    "python scripts/calculate_params.py --model llama2-7b": RUN,
    "python scripts/calculate_params.py --model llama2-7b llama2-13b --output_dir":
        "tests/test_paper_params.py::test_cli_writes_table_csv_and_plot",
    "python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --dry_run": RUN,
    "python scripts/run_grid.py configs/experiments/paper_":
        "tests/test_paper_grid.py::test_real_subprocesses_with_stand_in_modules",
    "python scripts/run_grid.py configs/experiments/mini_smollm2.yaml":
        "tests/test_paper_grid.py::test_shipped_grids_load",
    "python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --devices":
        "tests/test_grid_scaleout.py::test_killed_runner_resumes_without_redoing_finished_stages",
    "python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --cell":
        "tests/test_grid_scaleout.py::test_one_cell_by_index_or_folder",
    "python scripts/run_grid.py configs/experiments/paper_llama2_7b_superni_mmlu.yaml --emit_slurm":
        "tests/test_grid_scaleout.py::test_emitted_slurm_files",
    "python scripts/run_grid.py configs/experiments/pilot_smollm2_cpu.yaml":
        "tests/test_grid_scaleout.py::test_cpu_workers_run_the_grid_two_cells_at_a_time",
    "python scripts/run_grid.py configs/experiments/frontier_smollm2_cpu.yaml":
        "tests/test_grid_scaleout.py::test_cpu_workers_run_the_grid_two_cells_at_a_time",
    "bash scripts/slurm_check.sh": "tests/test_grid_scaleout.py::test_real_slurm_runs_the_emitted_jobs",
    "python scripts/pilot_report.py": "tests/test_pilot_report.py::test_cli_writes_the_report",
    "python scripts/report_results.py": "tests/test_paper_report.py::test_cli_frontier_switch",
    "python scripts/summarize_results.py": "tests/test_paper_summarize.py::test_cli_task_switch",
    "python scripts/plot_results.py": "tests/test_paper_plots.py::test_cli",
    # benchmarks
    "python benchmarks/bench_prolora_layer.py": "tests/test_docs.py::test_benchmark_runs_small",
    "python benchmarks/bench_finetune.py --against trainer": "tests/test_docs.py::test_benchmark_runs_small",
    "python benchmarks/bench_finetune.py": "tests/test_docs.py::test_benchmark_runs_small",
    "python benchmarks/bench_eval.py": "tests/test_docs.py::test_benchmark_runs_small",
}

EXTERNAL = {"docker", "curl", "export", ".venv/bin/ruff", "accelerate", "git", "pip", "cd"}  # programs not ours
TRACKED_ROOTS = ("configs", "scripts", "benchmarks", "tests", "open_instruct", "eval", "prolora")
RUN_TIMEOUT = 120


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line of the command's first line
    text: str  # the command as the reader would type it, comments dropped

    @property
    def tokens(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def words(self) -> list[str]:
        """The tokens without leading ``VAR=value`` assignments, the interpreter's path normalised."""
        words = self.tokens
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]) and len(words) > 1:
            words = words[1:]
        if words and re.fullmatch(r"(\.venv/bin/)?python3?", words[0]):
            words = ["python", *words[1:]]
        elif words and words[0] == ".venv-vllm/bin/python":
            words = ["vllm-python", *words[1:]]
        return words

    @property
    def key(self) -> str:
        """The text `HOW` matches: as written, but for `words`' two normalisations, blanks collapsed."""
        text = re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)+", "", " ".join(self.text.split()))
        text = re.sub(r"^\.venv-vllm/bin/python\b", "vllm-python", text)
        return re.sub(r"^(\.venv/bin/)?python3?\b", "python", text)


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_commands() -> list[DocCommand]:
    commands = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        in_block, pending, start = False, "", 0
        for number, line in enumerate(lines, 1):
            fence = line.strip()
            if fence.startswith("```"):
                in_block = not in_block and fence[3:].strip() in ("bash", "sh", "shell")
                continue
            if not in_block:
                continue
            text = _strip_comment(line)
            if not pending:
                start = number
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            text, pending = (pending + text).strip(), ""
            if not text:
                continue
            where = f"{path.relative_to(REPO)}:{start}"
            for inner in re.findall(r"\$\(([^()]*)\)", text):  # `$(command)`: a command of its own
                commands.append(DocCommand(where, inner.strip()))
            text = re.sub(r"\$\(([^()]*)\)", "SUBSTITUTED", text)
            commands.extend(DocCommand(where, part.strip()) for part in text.split(" && "))
    return commands


COMMANDS = doc_commands()


def how(command: DocCommand) -> str | None:
    matches = [prefix for prefix in HOW if command.key.startswith(prefix)]
    return HOW[max(matches, key=len)] if matches else None


# ---------------------------------------------------------------------------------- what a command goes to

@dataclass(frozen=True)
class Target:
    """A program of ours a command runs, and the part of the command that is its arguments."""

    argv: tuple[str, ...]  # how to run it here (with --help appended to read its flags)
    args: tuple[str, ...]
    shell_script: Path | None = None
    module: str | None = None
    script: Path | None = None


def targets(command: DocCommand) -> list[Target]:
    words = command.words
    found = []
    if words[:2] == ["accelerate", "launch"] and "-m" in words:
        cut = words.index("-m")
        found.append(Target((str(Path(sys.executable).with_name("accelerate")), "launch"), tuple(words[2:cut])))
        words = ["python", *words[cut:]]
    if words[0] in ("python", "vllm-python") and len(words) > 1:
        if words[1] == "-m":
            found.append(Target((sys.executable, "-m", words[2]), tuple(words[3:]), module=words[2]))
        else:
            found.append(Target((sys.executable, words[1]), tuple(words[2:]), script=REPO / words[1]))
    elif words[0] == "bash" or words[0].endswith(".sh"):
        script = words[1] if words[0] == "bash" else words[0]
        found.append(Target((), tuple(words[2:] if words[0] == "bash" else words[1:]), shell_script=REPO / script))
    return found


def flags_and_choices(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The ``--flags`` among ``args`` (up to a bare ``--``: what follows goes to another program), and the names of
    each ``{a,b}`` or ``a|b`` list of choices."""
    flags, choices = [], []
    for arg in args:
        if arg == "--":
            break
        arg = arg.strip("[]")
        flags += re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", arg.split("=", 1)[0])
        if re.fullmatch(r"\{[\w,]+\}", arg):
            choices += arg[1:-1].split(",")
        elif re.fullmatch(r"\w+(\|\w+)+", arg):
            choices += arg.split("|")
    return flags, choices


def _help_text(argv: tuple[str, ...]) -> tuple[bool, str]:
    """``(True, the --help text)``, or ``(False, why not)``: run from the repository root, as the docs do."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)
    return proc.returncode == 0, proc.stdout if proc.returncode == 0 else proc.stderr[-2000:]


@functools.cache
def help_texts() -> dict[tuple[str, ...], tuple[bool, str]]:
    """`_help_text` of every existing program the docs run, read in parallel once per session."""
    wanted = sorted({t.argv for c in COMMANDS for t in targets(c)
                     if t.module or (t.script and t.script.is_file()) or t.argv[-1:] == ("launch",)})
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(wanted, pool.map(_help_text, wanted)))


def repo_paths(args: tuple[str, ...]) -> list[str]:
    """The arguments that name a tracked file of this repository (configs, scripts, ...), by their look."""
    return [arg for arg in args if "/" in arg and arg.split("/")[0] in TRACKED_ROOTS and "<" not in arg
            and re.search(r"\.(py|sh|ya?ml|conf|json)$", arg)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {c.key[:60]}")
def test_docs_command_names_what_exists(command):
    program = command.words[0]
    assert targets(command) or program in EXTERNAL, f"{command.where}: {program!r} is neither ours nor a known tool"
    for target in targets(command):
        if target.script:
            assert target.script.is_file(), f"{command.where}: no script {target.script.relative_to(REPO)}"
        if target.shell_script:
            assert target.shell_script.is_file(), f"{command.where}: no script {target.shell_script}"
            text = target.shell_script.read_text()
        else:  # a module that does not resolve fails here too ("No module named ...")
            ok, text = help_texts().get(target.argv) or _help_text(target.argv)
            assert ok, f"{command.where}: {shlex.join(target.argv[1:])} --help failed: {text}"
        flags, choices = flags_and_choices(target.args)
        for flag in flags:
            assert re.search(re.escape(flag) + r"(?![\w-])", text), f"{command.where}: {flag} is not a flag of " \
                f"{shlex.join(target.argv[1:]) or target.shell_script}"
        for choice in choices:
            assert re.search(rf"\b{re.escape(choice)}\b", text), f"{command.where}: {choice!r} is not a choice there"
        for path in repo_paths(target.args):
            assert (REPO / path).exists(), f"{command.where}: {path} does not exist"


def _node_exists(node: str) -> bool:
    file, _, name = node.partition("::")
    path = REPO / file
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {c.key[:60]}")
def test_docs_command_is_run_or_covered(command):
    way = how(command)
    assert way is not None, f"{command.where}: `{command.text}` is neither run here nor mapped to a test (HOW)"
    if way not in (RUN, COLLECT):
        assert _node_exists(way), f"{command.where}: HOW maps it to {way}, which does not exist"


def test_every_mapping_is_used():
    """A `HOW` entry that matches no docs command is a stale mapping (the command was edited or removed)."""
    keys = [c.key for c in COMMANDS]
    unused = [prefix for prefix in HOW if not any(key.startswith(prefix) for key in keys)]
    assert not unused, unused


# ------------------------------------------------------------------------------------ the commands run here

@pytest.fixture
def scratch(tmp_path):
    """A folder where a command may write, with the repository's tracked inputs linked in."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    return tmp_path


def _stand_in_training_files(command: DocCommand, scratch: Path) -> None:
    """A grid's dry run checks that its training files exist: empty ones in the scratch folder stand in for them."""
    config = REPO / command.words[2]
    while config:
        text = config.read_text()
        for name in re.findall(r"^\s*train_file:\s*(\S+)", text, re.M):
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).touch()
        extends = re.search(r"^extends:\s*(\S+)", text, re.M)
        config = config.parent / extends[1] if extends else None


def _run(argv: list[str], cwd: Path, timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _runnable(command: DocCommand) -> list[str]:
    words = command.words
    if words[0] == "python":
        script = words[1]
        return [sys.executable, *(words[1:] if script == "-m" else [str(REPO / script), *words[2:]])]
    return ["bash", "-c", command.text]


@pytest.mark.parametrize("command", [c for c in COMMANDS if how(c) == RUN], ids=lambda c: f"{c.where} {c.key[:60]}")
def test_short_docs_command_runs(command, scratch):
    if "--dry_run" in command.words:
        _stand_in_training_files(command, scratch)
    proc = _run(_runnable(command), scratch)
    assert proc.returncode == 0, f"{command.where}: `{command.text}` failed:\n{proc.stderr[-3000:]}"
    if "calculate_params.py" in command.key and "--output_dir" in command.words:
        out = scratch / command.words[command.words.index("--output_dir") + 1]
        assert any(out.iterdir()), f"{command.where}: nothing written to {out}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if how(c) == COLLECT],
                         ids=lambda c: f"{c.where} {c.key[:60]}")
def test_docs_pytest_selection_is_not_empty(command):
    words = command.words
    files = [REPO / w for w in words if w.startswith("tests/") and w.endswith(".py")]
    keyword = words[words.index("-k") + 1] if "-k" in words else None
    if files and keyword and keyword.isidentifier():  # one file and one word: read the test names, run nothing
        names = [n.name for f in files for n in ast.parse(f.read_text()).body if isinstance(n, ast.FunctionDef)]
        assert any(n.startswith("test") and keyword in n for n in names), f"{command.where}: -k {keyword} selects none"
        return
    proc = _run([*_runnable(command), "--collect-only", "-p", "no:cacheprovider"], REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\b[1-9]\d* tests? collected|^tests/\S+::", proc.stdout, re.M), proc.stdout[-2000:]


# ---------------------------------------------------------------------- the tests that HOW names in this file

def test_ci_runs_setup_lint_and_every_test():
    """CI's entry point runs the README's test command, which sets up, lints and runs every test."""
    ci = (REPO / ".ci" / "run").read_text()
    suite = (REPO / "scripts" / "test.sh").read_text()
    assert re.search(r"^bash scripts/test\.sh\b", ci, re.M), ci
    for line in ("bash scripts/setup.sh", ".venv/bin/ruff check .", "export HF_HUB_OFFLINE=1"):
        assert re.search(rf"^{re.escape(line)}", suite, re.M), line
    pytest_line = next(line for line in suite.splitlines() if "-m pytest" in line)
    assert pytest_line.rstrip().endswith("tests") and " -m " not in pytest_line.split("pytest", 1)[1], pytest_line


def test_docker_commands_fit_the_dockerfile():
    """No Docker here: the image's recipe is checked instead. What it copies exists, its working folder is where the
    docs' volumes mount, and the launcher the docs run inside it is one the image copies."""
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = []
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, re.M):
        for source in sources.split():
            assert list(REPO.glob(source)), f"Dockerfile copies {source}, which does not exist"
            copied.append(source)
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.M)[-1]
    runs = [c for c in COMMANDS if c.words[:2] == ["docker", "run"]]
    assert runs and any(c.words[:2] == ["docker", "build"] for c in COMMANDS)
    for command in runs:
        words = command.words
        volumes = [words[i + 1] for i, word in enumerate(words) if word == "-v"]
        assert all(v.split(":")[1].startswith(workdir + "/") for v in volumes), (command.where, volumes, workdir)
        launcher = next(word for word in words if word.startswith("./"))
        assert any(fnmatch.fnmatch(launcher[2:], pattern) for pattern in copied), (command.where, launcher)
        assert (REPO / launcher).is_file()


BENCHMARKS = {  # script → its smallest real run
    "bench_prolora_layer.py": ["--shapes", "smollm2-135m", "--repeats", "1", "--warmup", "0", "--json", "layer.json"],
    "bench_finetune.py": ["--repeats", "1", "--steps", "1", "--batch_size", "1", "--seq_len", "16"],
    "bench_eval.py": ["--examples", "2", "--batch_sizes", "1", "2", "--repeats", "1", "--max_new_tokens", "4"],
    "bench_finetune.py --against trainer": ["--against", "trainer", "--datasets", "asdiv", "--examples", "4",
                                            "--batch_size", "2", "--loop_repeats", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_benchmark_runs_small(script, tmp_path):
    """Each benchmark the docs show, on the real SmolLM2, at its smallest settings: it finishes with its results."""
    if "--against trainer" in script and not (REPO / "data" / "processed" / "asdiv" / "asdiv_data.jsonl").is_file():
        pytest.skip("no data/processed/asdiv (scripts/prepare_train_data.sh --offline builds it)")
    proc = _run([sys.executable, str(REPO / "benchmarks" / script.split()[0]), *BENCHMARKS[script]], tmp_path,
                timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if script.startswith("bench_finetune"):
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        fractions = [result["lora_fraction_of_matmul"], result["prolora_fraction_of_matmul"]] if "--against" not in \
            script else list(result["asdiv"]["fraction_of_matmul"].values())
        assert all(f > 0 for f in fractions), result
    elif script == "bench_prolora_layer.py":
        assert json.loads((tmp_path / "layer.json").read_text()), "no results written"
    else:  # bench_eval: a row per task and batch size
        rows = [line.split() for line in proc.stdout.splitlines() if line.endswith("x")]
        assert {row[-3] for row in rows} >= {"1", "2"}, proc.stdout[-2000:]


@pytest.mark.slow
def test_demo_runs_small(tmp_path):
    """The README's demo on the real SmolLM2, trained and scored on a dozen made-up problems of ASDiv's layout (its
    held-out loss reads the whole held-out file, so the packaged one would take many minutes)."""
    data = tmp_path / "data" / "asdiv"
    data.mkdir(parents=True)
    for name, numbers in (("asdiv_data.jsonl", range(8)), ("asdiv_heldout.jsonl", range(8, 12))):
        records = [{"dataset": "asdiv", "id": f"asdiv_{i}", "messages": [
            {"role": "user", "content": f"Ann has {i} apples and gets 3 more. How many apples does she have?"},
            {"role": "assistant", "content": f"The answer is {i + 3}."}]} for i in numbers]
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = _run([sys.executable, str(REPO / "scripts" / "demo.py"), "--output_dir", str(tmp_path / "demo"),
                 "--data_dir", str(tmp_path / "data"), "--train_examples", "4", "--batch_size", "2", "--num_eval", "2",
                 "--eval_batch_size", "2", "--max_new_tokens", "4"], tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert "PRoLoRA" in json.dumps(results), results
