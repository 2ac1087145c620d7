"""`python -m open_instruct.serve`: adapter checks, the export cache, the `vllm serve` command line, offline batches."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.models import make_tiny_llama
from peft import LoraConfig, PeftModel, VeraConfig, get_peft_model

import prolora
from open_instruct import serve
from open_instruct.cli import UsageError
from open_instruct.tied_lora import TiedLoraConfig

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _tiny_llama(seed=0):
    """A tiny random Llama whose vocabulary matches the SmolLM2 tokenizer."""
    return make_tiny_llama(vocab_size=49152, seed=seed, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                           pad_token_id=2)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, smollm2_path):
    """A tiny random Llama checkpoint with the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    _tiny_llama().save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(out)
    return out


def save_adapter(base_dir, config, out, seed=1, scale=0.3) -> Path:
    """An adapter on the model in ``base_dir`` with random (non-zero) weights, saved to ``out``."""
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(out)
    return Path(out)


PROLORA_CONFIGS = {
    "math": dict(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2),
    "code": dict(r=4, unshared_r=2, reduce_lora_A_x=4, reduce_lora_B_x=4),
}


def prolora_adapters(base_dir, root, scale=0.3) -> dict[str, Path]:
    return {name: save_adapter(base_dir, prolora.ProLoraConfig(lora_alpha=16, target_modules=TARGETS, **kw),
                               root / name, seed=i + 1, scale=scale)
            for i, (name, kw) in enumerate(PROLORA_CONFIGS.items())}


def run_cli(argv, capsys):
    """``run(main)`` as the command line does: returns (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        serve.run(serve.main, argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def write_prompts(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------------------------ the command line

def test_max_lora_rank_rounds_up_to_what_vllm_accepts():
    assert [serve.vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 17, 300, 320, 321, 512)] == \
        [1, 8, 8, 16, 16, 32, 320, 320, 512, 512]
    with pytest.raises(UsageError, match="513 exceeds"):
        serve.vllm_max_lora_rank(513)


def test_vllm_serve_argv():
    argv = serve.vllm_serve_argv("/v/bin/vllm", "BASE", {"math": Path("/c/1/lora"), "code": Path("/a/code")}, 12,
                                 ["--port", "9000", "--dtype", "float32"])
    assert argv == ["/v/bin/vllm", "serve", "BASE", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16",
                    "--lora-modules", "math=/c/1/lora", "code=/a/code", "--port", "9000", "--dtype", "float32"]
    assert "localhost:9000/v1/completions" in serve.curl_example("math", ["--port", "9000"])
    assert '"model": "math"' in serve.curl_example("math", [])


def test_adapter_specs():
    assert serve.parse_adapter_specs(["a=/x/y", "/p/q/"]) == [("a", Path("/x/y")), ("q", Path("/p/q/"))]
    with pytest.raises(UsageError, match="given twice"):
        serve.parse_adapter_specs(["/x/a", "/y/a"])
    with pytest.raises(UsageError, match="reserved"):
        serve.parse_adapter_specs(["__base__=/x"])


def test_same_base_compares_sensibly(tmp_path):
    one, copy, other = tmp_path / "one", tmp_path / "copy" / "SmolLM2-135M-Instruct", tmp_path / "other"
    for folder, hidden in ((one, 64), (copy, 64), (other, 128)):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"hidden_size": hidden, "_name_or_path": str(folder)}))
    assert serve.same_base(str(one), str(one) + "/") and serve.same_base(str(one), str(copy))
    assert not serve.same_base(str(one), str(other))
    assert serve.same_base("HuggingFaceTB/SmolLM2-135M-Instruct", str(copy))
    assert not serve.same_base("meta-llama/Llama-2-7b-hf", str(copy))


def test_serve_mode_exports_into_a_content_cache_and_execs_vllm(tiny_base, tmp_path, capsys, monkeypatch):
    """(a): every non-LoRA adapter becomes an equivalent LoRA folder, then `vllm serve` is exec'ed (stubbed)."""
    adapters = prolora_adapters(tiny_base, tmp_path)
    adapters["tied"] = save_adapter(tiny_base, TiedLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS),
                                    tmp_path / "tied", seed=5)
    adapters["vera"] = save_adapter(tiny_base, VeraConfig(r=16, target_modules=["q_proj", "v_proj"]),
                                    tmp_path / "vera", seed=6, scale=0.05)
    adapters["lora"] = save_adapter(tiny_base, LoraConfig(r=4, target_modules=TARGETS), tmp_path / "lora", seed=7)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "vllm").write_text("#!/bin/sh\n")
    (fake_bin / "vllm").chmod(0o755)
    monkeypatch.setattr(serve, "find_vllm", lambda: str(fake_bin / "vllm"))
    launched = []
    monkeypatch.setattr(os, "execv", lambda path, argv: launched.append(argv))
    cache = tmp_path / "cache"
    argv = ["--base_model_name_or_path", str(tiny_base), "--cache_dir", str(cache),
            "--adapters", *(f"{name}={path}" for name, path in adapters.items()), "--", "--port", "8123"]

    assert serve.main(argv) is None and len(launched) == 1
    command = launched[0]
    assert command[:3] == [str(fake_bin / "vllm"), "serve", str(tiny_base)]
    assert command[command.index("--max-loras") + 1] == "5"
    assert command[command.index("--max-lora-rank") + 1] == "16" and command[-2:] == ["--port", "8123"]
    modules = dict(spec.split("=", 1) for spec in command[command.index("--lora-modules") + 1:-2])
    assert list(modules) == list(adapters) and modules["lora"] == str(adapters["lora"])
    assert "localhost:8123/v1/completions" in capsys.readouterr().out


    import open_instruct.tied_lora  # noqa: F401

    input_ids = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = _tiny_llama()(input_ids).logits
    for name in ("math", "code", "tied", "vera"):
        exported = Path(modules[name])
        assert exported.is_relative_to(cache) and json.loads((exported / "adapter_config.json").read_text())[
            "peft_type"] == "LORA"
        with torch.no_grad():
            original = PeftModel.from_pretrained(_tiny_llama(), adapters[name]).eval()(input_ids).logits
            as_lora = PeftModel.from_pretrained(_tiny_llama(), exported).eval()(input_ids).logits
        assert (original - base_logits).abs().max() > 1e-3  # the adapter matters
        assert (as_lora - original).abs().max() < 1e-4, name

    # the cache is keyed by content: a second run exports nothing; a changed adapter gets a new folder
    stamps = {name: (Path(modules[name]) / "adapter_model.safetensors").stat().st_mtime_ns for name in ("math", "tied")}
    serve.main(argv)
    again = dict(spec.split("=", 1) for spec in launched[1][launched[1].index("--lora-modules") + 1:-2])
    assert again == modules
    assert all((Path(modules[n]) / "adapter_model.safetensors").stat().st_mtime_ns == t for n, t in stamps.items())
    save_adapter(tiny_base, prolora.ProLoraConfig(lora_alpha=16, target_modules=TARGETS, **PROLORA_CONFIGS["math"]),
                 adapters["math"], seed=9)
    serve.main(argv)
    changed = dict(spec.split("=", 1) for spec in launched[2][launched[2].index("--lora-modules") + 1:-2])
    assert changed["math"] != modules["math"] and changed["code"] == modules["code"]


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_is_one_error_line_before_any_model_loads(tiny_base, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    good = tmp_path / "good"
    good.mkdir()
    (good / "adapter_config.json").write_text(json.dumps({"peft_type": "PROLORA", "r": 8,
                                                          "base_model_name_or_path": str(tiny_base)}))
    (good / "adapter_model.safetensors").write_bytes(b"")
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "rank_pattern": {"q": 1024}}))
    (huge / "adapter_model.safetensors").write_bytes(b"")
    other_base = tmp_path / "other_base"
    other_base.mkdir()
    (other_base / "config.json").write_text(json.dumps({"hidden_size": 4096}))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text(json.dumps({"peft_type": "PROLORA", "r": 8}))
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "r": 8}))
    (ia3 / "adapter_model.safetensors").write_bytes(b"")
    prompts = write_prompts(tmp_path / "p.jsonl", [{"adapter": "good", "prompt": "hi"},
                                                   {"adapter": "nope", "prompt": "x"}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"adapter": "good", "prompt": "hi"}\n{"adapter": \n')
    output = tmp_path / "out.jsonl"
    output.write_text("keep me\n")
    base = ["--base_model_name_or_path", str(tiny_base)]
    offline = ["--prompts", str(prompts), "--output", str(output)]
    cases = [
        (base + ["--adapters", str(good)] + offline, f"{prompts}:2: unknown adapter 'nope'"),
        (base + ["--adapters", str(good), "--prompts", str(broken), "--output", str(output)],
         f"{broken}:2: invalid JSON"),
        (base + ["--adapters", str(tmp_path / "missing")] + offline, "missing: no such folder"),
        (base + ["--adapters", str(no_weights)] + offline, "no adapter_model.safetensors or adapter_model.bin"),
        (base + ["--adapters", str(ia3)] + offline, "peft_type 'IA3' cannot be served"),
        (base + ["--adapters", str(huge)] + offline, "rank 1024 exceeds vLLM's largest max_lora_rank 512"),
        (["--base_model_name_or_path", str(other_base), "--adapters", str(good)] + offline,
         f"trained on base model '{tiny_base}'"),
        (base + ["--adapters", str(good), "--prompts", str(tmp_path / "none.jsonl"), "--output", str(output)],
         "none.jsonl: no such file"),
        (base + ["--adapters", str(good), "--prompts", str(prompts)], "--prompts needs --output"),
    ]
    for argv, message in cases:
        status, _, err = run_cli(argv, capsys)
        assert status == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (message, err)
    assert output.read_text() == "keep me\n"


# ------------------------------------------------------------------------------------------ offline batches

def reference_generate(base_dir, adapters: dict[str, Path], rows, max_new_tokens):
    """Each prompt alone, with its adapter alone active (``__base__``: adapters disabled)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    names = list(adapters)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    out = []
    for name, prompt in rows:
        batch = tokenizer(prompt, return_tensors="pt")
        settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            if name == "__base__":
                with model.disable_adapter():
                    ids = model.generate(**batch, **settings)
            else:
                model.set_adapter(name)
                ids = model.generate(**batch, **settings)
        new = ids[0, batch["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id) + 1]
        out.append(new)
    return out


ROWS = [("math", "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"),
        ("code", "def fibonacci(n):"), ("__base__", "The capital of France is"), ("math", "The sum of 12 and 30 is"),
        ("code", "Write a haiku about the sea.")]


@pytest.mark.slow
def test_offline_hf_mixed_batch_on_smollm2(smollm2_path, tmp_path, capsys):
    """(b) without vLLM: one PEFT mixed batch (compact PRoLoRA adapters) equals each prompt run alone."""
    adapters = prolora_adapters(smollm2_path, tmp_path, scale=0.05)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"adapter": a, "prompt": p} for a, p in ROWS])
    output = tmp_path / "out.jsonl"
    status, out, err = run_cli(["--base_model_name_or_path", str(smollm2_path), "--backend", "hf",
                                "--adapters", *(f"{n}={p}" for n, p in adapters.items()),
                                "--prompts", str(prompts), "--output", str(output), "--max_new_tokens", "8",
                                "--dtype", "float32", "--batch_size", "5"], capsys)
    assert status == 0, err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["adapter"], r["prompt"]) for r in rows] == ROWS and {r["engine"] for r in rows} == {"hf"}
    assert [r["token_ids"] for r in rows] == reference_generate(smollm2_path, adapters, ROWS, 8)
    assert len({r["completion"] for r in rows}) == len(rows)
    assert not (tmp_path / "cache").exists()  # one adapter type: served compact, nothing exported


# ---------------------------------------------------------------------------------------------- real vLLM

def run_in_vllm_venv(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    if not VLLM_PYTHON.is_file():
        pytest.skip(".venv-vllm is absent: run `bash scripts/setup_vllm.sh` (scripts/test.sh does)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(VLLM_PYTHON), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_mixed_batch_matches_hf_prolora(smollm2_path, tmp_path):
    """A real vLLM engine serves two exported PRoLoRA adapters in one batch (base rows in a second call): greedy
    tokens equal the HF PRoLoRA model's, each prompt run alone with its adapter."""
    adapters = prolora_adapters(smollm2_path, tmp_path, scale=0.05)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"adapter": a, "prompt": p} for a, p in ROWS])
    output = tmp_path / "out.jsonl"
    result = run_in_vllm_venv(["-m", "open_instruct.serve", "--base_model_name_or_path", str(smollm2_path),
                               "--adapters", *(f"{n}={p}" for n, p in adapters.items()), "--prompts", str(prompts),
                               "--output", str(output), "--max_new_tokens", "8", "--dtype", "float32",
                               "--max_model_len", "256", "--cache_dir", str(tmp_path / "cache")])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert {r["engine"] for r in rows} == {"vllm"}
    assert [r["token_ids"] for r in rows] == reference_generate(smollm2_path, adapters, ROWS, 8)


@pytest.mark.vllm
@pytest.mark.slow
def test_gsm_eval_with_use_vllm(smollm2_path, tmp_path):
    """`--use_vllm` end to end on a few GSM examples with a PRoLoRA adapter, run in the vLLM venv."""
    adapter = prolora_adapters(smollm2_path, tmp_path, scale=0.05)["math"]
    save_dir = tmp_path / "gsm"
    result = run_in_vllm_venv(["-m", "eval.gsm.run_eval", "--data_dir", str(REPO / "tests/fixtures/eval/gsm"),
                               "--model_name_or_path", str(smollm2_path), "--adapter_name_or_path", str(adapter),
                               "--use_vllm", "--max_num_examples", "3", "--n_shot", "2", "--max_new_tokens", "16",
                               "--save_dir", str(save_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert "exact_match" in metrics
    predictions = [json.loads(line) for line in (save_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3
