"""Who imports what: the evals never import the training tools, and the command-line tools report a bad flag
with one ``error:`` line before torch, transformers or peft are imported (a typo costs no start-up time)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINING_MODULES = ("open_instruct.finetune", "open_instruct.merge_lora", "open_instruct.training")
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement of ``path`` names (at any depth)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_evals_never_import_the_training_tools():
    files = sorted((REPO / "eval").rglob("*.py"))
    assert REPO / "eval" / "backends.py" in files
    for path in files:
        bad = sorted(name for name in imported_modules(path)
                     if any(name == m or name.startswith(m + ".") for m in TRAINING_MODULES))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_data_package_never_imports_the_method_or_training():
    """Converters, validation and encoding are plain data code: no PEFT method, no training, no PEFT or torch."""
    files = sorted((REPO / "open_instruct" / "data").rglob("*.py"))
    assert REPO / "open_instruct" / "data" / "convert.py" in files
    forbidden = (*TRAINING_MODULES, "prolora", "peft", "torch", "open_instruct.peft_methods", "open_instruct.tied_lora")
    for path in files:
        bad = sorted(name for name in imported_modules(path)
                     if any(name == m or name.startswith(m + ".") for m in forbidden))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_dequantisation_recipe_lives_beside_the_quantisation_record():
    from open_instruct import base_quantization, merge_lora

    assert merge_lora.load_dequantized_base is base_quantization.load_dequantized_base
    assert "def load_dequantized_base" not in (REPO / "open_instruct" / "merge_lora.py").read_text()


# Runs a CLI as `python -m` / `python script.py` would, then reports which heavy packages it had imported when it
# exited (argv[1]: a module name or a script path; the rest: its arguments).
PROBE = """
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if target.endswith(".py"):
        sys.path.insert(0, str(__import__("pathlib").Path(target).parent))
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    heavy = [m for m in %r if m in sys.modules]
    print(f"exit={exit.code} heavy={','.join(heavy) or '-'}", file=sys.stderr)
    raise
""" % (HEAVY,)

FINETUNE = ["open_instruct.finetune", "--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o"]


@pytest.mark.parametrize("argv, fragment", [
    (FINETUNE + ["--learnin_rate", "1e-4"], "unrecognized arguments: --learnin_rate"),
    (FINETUNE + ["--lr_scheduler_type", "cosine_decay"], "invalid choice: 'cosine_decay'"),
    (FINETUNE + ["--learning_rate", "-1"], "--learning_rate must be > 0, got -1.0"),
    (FINETUNE + ["--lora_rank", "0", "--use_lora"], "--lora_rank must be >= 1, got 0"),
    (FINETUNE + ["--lora_rank", "8"], "--lora_rank configures an adapter, but this is a full fine-tune"),
    (FINETUNE + ["--peft_method", "dora"], "argument --peft_method: invalid choice: 'dora'"),
    (FINETUNE + ["--checkpointing_steps", "often"], "--checkpointing_steps must be a positive integer"),
    (["open_instruct.merge_lora", "--lora_model_name_or_path", "a", "--bogus"], "unrecognized arguments: --bogus"),
    (["open_instruct.reformat_datasets", "--bogus"], "unrecognized arguments: --bogus"),
    (["open_instruct.mix_jsonl", "a.jsonl", "--output", "o.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
    (["scripts/run_grid.py", "no/such/grid.yaml", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["scripts/run_grid.py", "no/such/grid.yaml"], "no/such/grid.yaml does not exist"),
    (["scripts/calculate_params.py", "--methods", "lora", "prolor"], "unknown method 'prolor'"),
    (["scripts/calculate_params.py", "--methods", "prolora:u=9"], "invalid hyper-parameters for prolora"),
    (["scripts/calculate_params.py", "--ranks", "eight"], "invalid int value: 'eight'"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_a_bad_flag_is_reported_before_heavy_imports(argv, fragment):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1] == "exit=2 heavy=-", proc.stderr  # nothing heavy was imported
    errors = [line for line in lines[:-1] if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py")))
def test_a_benchmark_reports_a_bad_flag_before_heavy_imports(script):
    """The benchmarks parse their flags before importing torch & co. They use plain argparse, so stderr is its usage
    text and then one ``<script>: error: ...`` line."""
    proc = subprocess.run([sys.executable, "-c", PROBE, f"benchmarks/{script}", "--bogus"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1] == "exit=2 heavy=-", proc.stderr  # nothing heavy was imported
    errors = [line for line in lines[:-1] if "error:" in line]
    assert errors == [f"{script}: error: unrecognized arguments: --bogus"], proc.stderr


def test_prolora_export_reports_a_bad_flag_before_torch_loads():
    """`python -m prolora.export` imports the `prolora` package first; run for real (not through runpy, which
    `PROBE` uses), its bad-flag error still comes before torch, transformers or peft are imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "prolora.export", "--base_model_name_or_path",
                           "m", "--adapter_dir", "a", "--output_dir", "o", "--bogus"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    assert "prolora" in imported and "argparse" in imported  # -X importtime did report the imports
    assert not [m for m in imported if m.split(".")[0] in HEAVY], sorted(imported)
    errors = [line for line in lines if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error:") and "--bogus" in errors[0], proc.stderr


def test_import_prolora_registers_the_peft_types_and_serves_every_public_name():
    """The package loads its names lazily, yet a plain `import prolora` still tells PEFT about PROLORA and MOS (what
    `PeftModel.from_pretrained` of a saved adapter needs), and each public name is the object its submodule defines."""
    script = """
import importlib, sys
import prolora
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
print(PEFT_TYPE_TO_CONFIG_MAPPING["PROLORA"].__name__, PEFT_TYPE_TO_TUNER_MAPPING["MOS"].__name__)
assert set(prolora.__all__) <= set(dir(prolora))
for name in prolora.__all__:
    module = importlib.import_module(prolora._SUBMODULE_OF[name])
    assert getattr(prolora, name) is getattr(module, name), name
try:
    prolora.no_such_name
except AttributeError as err:
    print("AttributeError:", err)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "ProLoraConfig MosModel"
    assert "no attribute 'no_such_name'" in proc.stdout
