"""Parameter counts of open_instruct.paper.params against instantiated models and the paper's closed forms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, VeraConfig, get_peft_model

from open_instruct.paper.params import (
    BUILTIN_MODELS,
    LLAMA_PROJECTIONS,
    MethodSpec,
    ModelDims,
    count_params,
    params_table,
    parse_method_spec,
    resolve_model_dims,
)
from open_instruct.tied_lora import TiedLoraConfig
from prolora import ProLoraConfig

torch.set_num_threads(1)


def peft_config(spec: MethodSpec, modules):
    common = {"r": spec.r, "target_modules": list(modules)}
    if spec.method == "lora":
        return LoraConfig(**common)
    if spec.method == "prolora":
        return ProLoraConfig(**common, unshared_r=spec.unshared_r, reduce_lora_A_x=spec.m, reduce_lora_B_x=spec.n)
    if spec.method == "vera":
        return VeraConfig(**common)
    return TiedLoraConfig(**common)


SPECS = [MethodSpec("lora", 4), MethodSpec("prolora", 4, 1, 2, 2), MethodSpec("prolora", 6, 2, 3, 5),
         MethodSpec("prolora", 4, 0, 4, 1), MethodSpec("vera", 8), MethodSpec("tied_lora", 4)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-r{s.r}-u{s.unshared_r}-m{s.m}-n{s.n}")
@pytest.mark.parametrize("modules", [LLAMA_PROJECTIONS, ("q_proj", "v_proj", "down_proj")], ids=["all7", "subset"])
def test_counts_equal_instantiated_model(tiny_llama, spec, modules):
    model = tiny_llama(hidden_size=64, intermediate_size=100, num_layers=3)  # 100: chunks that do not divide
    dims = ModelDims.from_config(model.config.to_dict())
    reported, _ = get_peft_model(model, peft_config(spec, modules)).get_nb_trainable_parameters()
    assert count_params(dims, spec, modules) == reported


def test_llama2_7b_closed_forms():
    dims = BUILTIN_MODELS["llama2-7b"]
    for r in (1, 8, 16, 64):
        assert count_params(dims, MethodSpec("lora", r)) == 2_498_560 * r
    assert count_params(dims, MethodSpec("prolora", 8, 1, 2, 2)) == 11_243_520
    assert count_params(dims, MethodSpec("prolora", 8, 1, 3, 3)) == 8_330_624
    assert count_params(dims, MethodSpec("prolora", 16, 1, 4, 4)) == 11_868_160
    assert count_params(dims, MethodSpec("prolora", 8, 1, 8, 8)) == 4_684_800
    d, D, L, r = 4096, 11008, 32, 8
    # VeRA (authors' calculate_params.py): L [4 (r + d) + 2 (r + D) + (r + d)]
    assert count_params(dims, MethodSpec("vera", r)) == L * (4 * (r + d) + 2 * (r + D) + (r + d))
    # Tied-LoRA: shared A (r x d_in) and B (d_out x r) per projection type + per-layer u (r) and v (d_out)
    shared = r * (4 * (d + d) + 2 * (d + D) + (D + d))
    assert count_params(dims, MethodSpec("tied_lora", r)) == shared + L * (7 * r + 5 * d + 2 * D)
    # the authors' "QKV only" Tied-LoRA baseline: 4 d r + (r + 3 d) L with one fused QKV projection
    assert count_params(dims, MethodSpec("tied_lora", r), ["q_proj", "k_proj", "v_proj"]) == \
        4 * d * r + 2 * d * r + (3 * r + 3 * d) * L  # three separate pairs: 2 more A's and 2 more u's


def test_llama2_13b_lora():
    assert count_params(BUILTIN_MODELS["llama2-13b"], MethodSpec("lora", 8)) == 40 * 8 * (8 * 5120 + 3 * (5120 + 13824))


def test_table_ratios_and_spec_parsing():
    rows = params_table([BUILTIN_MODELS["llama2-7b"]], ["lora", "prolora:u=1:m=2:n=2"], [8, 16])
    assert [(row["r"], row["params"]) for row in rows] == [(8, 19_988_480), (8, 11_243_520), (16, 39_976_960),
                                                           (16, 21_237_760)]
    assert rows[1]["ratio_to_lora"] == pytest.approx(0.5625)
    assert parse_method_spec("prolora:m=4", 8) == MethodSpec("prolora", 8, 0, 4, 1)
    for bad in ("prolora:x=1", "lora:u=1", "dora", "prolora:u=9"):
        with pytest.raises(ValueError):
            parse_method_spec(bad, 8)


def test_resolve_model_dims_from_config_file(tmp_path):
    config = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "head_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model_dims(str(tmp_path)).projection_shapes() == BUILTIN_MODELS["smollm2-135m"].projection_shapes()
    (tmp_path / "broken.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="lacks 'num_attention_heads'"):
        resolve_model_dims(str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model_dims("nope")


@pytest.mark.slow
def test_builtin_smollm2_matches_packaged_checkpoint(smollm2_path):
    dims = resolve_model_dims("offline:smollm2")
    assert dims.projection_shapes() == BUILTIN_MODELS["smollm2-135m"].projection_shapes()
    assert dims.num_layers == BUILTIN_MODELS["smollm2-135m"].num_layers


def test_cli_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / "params"
    proc = subprocess.run([sys.executable, "scripts/calculate_params.py", "--model", "llama2-7b", "--ranks", "8", "16",
                           "--methods", "lora", "prolora:u=1:m=2:n=2", "tied_lora", "--output_dir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| Llama-2-7B | PRoLoRA (u=1, m=2, n=2) | 8 | 11,243,520 | 56.25 |" in proc.stdout
    csv_lines = (out / "params.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,method,r,u,m,n,params,ratio_to_lora") and len(csv_lines) == 7
    assert (out / "params_vs_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "scripts/calculate_params.py", "--methods", "dora"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown method 'dora'" in bad.stderr
