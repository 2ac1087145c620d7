"""PRoLoRA adapter: the rebuild rule against a naive reference, LoRA equivalence, init, params, PEFT plumbing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import prolora as P
from open_instruct.peft_methods import LLAMA_PROJECTIONS
from prolora.rebuild import chunk_width

ATTN_MLP = list(LLAMA_PROJECTIONS)


# --------------------------------------------------------------------------- naive reference (explicit loops)


def naive_delta_weight(A0, B0, A_u, B_u, d_in, d_out, r, u, m, n, s_A, s_B, scale):
    """ΔW[o, x] built entry by entry from the spec's formula, with explicit loops over blocks and ranks."""
    rs = r - u
    c_A, c_B = math.ceil(d_in / m), math.ceil(d_out / n)
    A = torch.zeros(r, d_in, dtype=torch.float64)
    B = torch.zeros(d_out, r, dtype=torch.float64)
    for x in range(d_in):
        k, j = divmod(x, c_A)
        for i in range(rs):
            A[i, x] = A0[(i + k * s_A) % rs, j]
        for t in range(u):
            A[rs + t, x] = A_u[t, x]
    for o in range(d_out):
        k, j = divmod(o, c_B)
        for i in range(rs):
            B[o, i] = B0[j, (i + k * s_B) % rs]
        for t in range(u):
            B[o, rs + t] = B_u[o, t]
    return scale * (B @ A)


def _randomize_adapter(model, seed=1):
    """Give every adapter tensor (including the zero-initialised B parts) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "prolora_" in name or "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    "d_in,d_out,r,u,m,n,rotation,shifts",
    [
        (72, 98, 8, 1, 5, 3, True, (None, None)),  # nothing divisible
        (64, 96, 8, 0, 2, 2, True, (None, None)),
        (64, 96, 6, 2, 4, 8, True, (None, None)),  # m > r' and n > r': strides clamp to 1
        (72, 98, 8, 3, 3, 2, False, (None, None)),  # CLoRA: no rotation
        (72, 98, 8, 1, 3, 2, True, (3, 5)),  # explicit strides
        (64, 96, 4, 4, 2, 2, True, (None, None)),  # u = r: no shared part
    ],
)
def test_rebuild_matches_naive_reference(d_in, d_out, r, u, m, n, rotation, shifts):
    layer = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
    cfg = P.ProLoraConfig(
        r=r, lora_alpha=12, unshared_r=u, reduce_lora_A_x=m, reduce_lora_B_x=n, enable_lora_rotation=rotation,
        lora_A_shift_size=shifts[0], lora_B_shift_size=shifts[1], target_modules=["0"],
    )
    model = get_peft_model(layer, cfg)
    _randomize_adapter(model)
    mod = model.base_model.model[0]
    s_A, s_B = cfg.strides()
    if rotation and shifts == (None, None):
        assert (s_A, s_B) == (max((r - u) // m, 1), max((r - u) // n, 1))
    get = lambda d: d["default"].detach().double() if "default" in d else None  # noqa: E731
    expected = naive_delta_weight(
        get(mod.prolora_A), get(mod.prolora_B), get(mod.prolora_A_unshared), get(mod.prolora_B_unshared),
        d_in, d_out, r, u, m, n, s_A, s_B, 12 / r,
    )
    torch.testing.assert_close(mod.get_delta_weight("default").double(), expected, rtol=1e-6, atol=1e-7)
    # The forward pass uses the same rebuilt matrices.
    x = torch.randn(3, d_in)
    base_out = torch.nn.functional.linear(x, mod.base_layer.weight, mod.base_layer.bias)
    torch.testing.assert_close(model(x).double(), base_out.double() + x.double() @ expected.T, rtol=1e-5, atol=1e-5)
    # Stored tensors are the compact chunks.
    if r - u > 0:
        assert tuple(mod.prolora_A["default"].shape) == (r - u, chunk_width(d_in, m))
        assert tuple(mod.prolora_B["default"].shape) == (chunk_width(d_out, n), r - u)
    if u > 0:
        assert tuple(mod.prolora_A_unshared["default"].shape) == (u, d_in)
        assert tuple(mod.prolora_B_unshared["default"].shape) == (d_out, u)


def test_rotation_changes_the_blocks():
    """Block k of A is A0 rolled by k*s; with rotation off all blocks are identical copies."""
    A0 = torch.arange(12.0).reshape(4, 3)  # r'=4, c_A=3
    rotated = P.rebuild_A(A0, None, in_features=9, copies=3, stride=1)
    assert torch.equal(rotated[:, 0:3], A0)
    assert torch.equal(rotated[:, 3:6], torch.roll(A0, shifts=-1, dims=0))
    assert torch.equal(rotated[:, 6:9], torch.roll(A0, shifts=-2, dims=0))
    plain = P.rebuild_A(A0, None, in_features=8, copies=3, stride=0)
    assert plain.shape == (4, 8)
    assert torch.equal(plain[:, 3:6], A0) and torch.equal(plain[:, 6:8], A0[:, :2])


def _copy_lora_into_prolora(lora_model, prolora_model, u):
    """Copy vanilla LoRA factors into a PRoLoRA model with m=n=1 (shared part) or u=r (unshared part)."""
    lora_layers = {n: m for n, m in lora_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    with torch.no_grad():
        for name, mod in prolora_model.named_modules():
            if not isinstance(mod, P.ProLoraLayer):
                continue
            A = lora_layers[name].lora_A["default"].weight
            B = lora_layers[name].lora_B["default"].weight
            rs = A.shape[0] - u
            if rs:
                mod.prolora_A["default"].copy_(A[:rs])
                mod.prolora_B["default"].copy_(B[:, :rs])
            if u:
                mod.prolora_A_unshared["default"].copy_(A[rs:])
                mod.prolora_B_unshared["default"].copy_(B[:, rs:])


@pytest.mark.parametrize("u,m,n", [(0, 1, 1), (3, 1, 1), (8, 1, 1), (8, 4, 2)])
def test_lora_equivalence(tiny_llama, u, m, n):
    """m = n = 1 or u = r is LoRA: same outputs as PEFT's LoRA with the same factors."""
    x = torch.randint(0, 128, (2, 9))
    lora = get_peft_model(tiny_llama(), LoraConfig(r=8, lora_alpha=16, target_modules=ATTN_MLP))
    _randomize_adapter(lora)
    prolora = get_peft_model(
        tiny_llama(), P.ProLoraConfig(r=8, lora_alpha=16, unshared_r=u, reduce_lora_A_x=m, reduce_lora_B_x=n,
                                      target_modules=ATTN_MLP)
    )
    _copy_lora_into_prolora(lora, prolora, u)
    torch.testing.assert_close(prolora(x).logits, lora(x).logits, rtol=1e-5, atol=1e-5)
    assert prolora.get_nb_trainable_parameters()[0] == lora.get_nb_trainable_parameters()[0]


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("rectified", [True, False])
def test_rectified_init_statistics(rectified):
    torch.manual_seed(0)
    d_in, d_out, m = 4096, 512, 4
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(d_in, d_out)),
        P.ProLoraConfig(r=16, unshared_r=2, reduce_lora_A_x=m, reduce_lora_B_x=2, target_modules=["0"],
                        rectified_init=rectified),
    )
    mod = model.base_model.model[0]
    A0, A_u = mod.prolora_A["default"].detach(), mod.prolora_A_unshared["default"].detach()
    bound_A0 = 1 / math.sqrt(d_in) if rectified else 1 / math.sqrt(chunk_width(d_in, m))
    assert A0.abs().max() <= bound_A0 and A0.abs().max() > 0.98 * bound_A0
    assert abs(A0.std().item() - bound_A0 / math.sqrt(3)) < 0.03 * bound_A0
    # Unshared rows have full width: their natural fan is d_in either way.
    assert A_u.abs().max() <= 1 / math.sqrt(d_in) and A_u.abs().max() > 0.98 / math.sqrt(d_in)
    assert torch.count_nonzero(mod.prolora_B["default"]) == 0
    assert torch.count_nonzero(mod.prolora_B_unshared["default"]) == 0
    # The rebuilt A of a rectified adapter has LoRA's statistics (std 1/sqrt(3 d_in)).
    if rectified:
        A, _ = mod.rebuild("default")
        assert abs(A.std().item() * math.sqrt(3 * d_in) - 1) < 0.03


# --------------------------------------------------------------------------- parameter accounting


@pytest.mark.parametrize("r,u,m,n", [(8, 1, 2, 2), (8, 0, 3, 5), (6, 6, 2, 2), (16, 1, 4, 4), (4, 1, 1, 1)])
def test_param_count_matches_peft(tiny_llama, r, u, m, n):
    cfg = P.ProLoraConfig(r=r, unshared_r=u, reduce_lora_A_x=m, reduce_lora_B_x=n, target_modules=ATTN_MLP)
    expected = P.count_adapter_params(tiny_llama(hidden_size=72, intermediate_size=98), cfg)
    model = get_peft_model(tiny_llama(hidden_size=72, intermediate_size=98), cfg)
    assert model.get_nb_trainable_parameters()[0] == expected
    # and by hand for one layer set: 4 attention (72->72 or 72->36 for k/v with GQA), 2 up, 1 down
    dims = [(72, 72), (72, 36), (72, 36), (72, 72), (72, 98), (72, 98), (98, 72)]
    assert expected == 2 * sum(P.prolora_layer_params(a, b, r, u, m, n) for a, b in dims)


def test_param_formula_llama2_7b():
    """The spec's Llama-2-7B numbers (L=32, d=4096, D=11008, seven projections)."""
    dims = [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
    lora = lambda r: 32 * sum(P.lora_layer_params(a, b, r) for a, b in dims)  # noqa: E731
    pro = lambda r, u, m: 32 * sum(P.prolora_layer_params(a, b, r, u, m, m) for a, b in dims)  # noqa: E731
    assert lora(8) == 19_988_480 and lora(1) == 2_498_560
    assert pro(8, 0, 2) == 9_994_240
    assert pro(8, 1, 2) == 11_243_520
    assert pro(16, 1, 4) == 11_868_160


# --------------------------------------------------------------------------- PEFT plumbing


@pytest.fixture
def trained_pair(tiny_llama, tmp_path):
    """A PRoLoRA model with random (non-zero) adapter weights, saved to tmp_path/adapter."""
    cfg = P.ProLoraConfig(r=8, lora_alpha=16, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=3,
                          target_modules=ATTN_MLP)
    model = get_peft_model(tiny_llama(hidden_size=72, intermediate_size=98), cfg)
    _randomize_adapter(model)
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_save_is_compact_and_reload_bit_exact(tiny_llama, trained_pair):
    model, path = trained_pair
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROLORA" and config["unshared_r"] == 1 and config["reduce_lora_B_x"] == 3
    tensors = load_file(path / "adapter_model.safetensors")
    assert tensors and all(".prolora_" in k for k in tensors)
    q_A = tensors["base_model.model.model.layers.0.self_attn.q_proj.prolora_A"]
    assert tuple(q_A.shape) == (7, 36)  # (r - u, ceil(72 / 2)): the chunk, never the expanded (8, 72)
    n_saved = sum(t.numel() for t in tensors.values())
    assert n_saved == model.get_nb_trainable_parameters()[0]

    reloaded = PeftModel.from_pretrained(tiny_llama(hidden_size=72, intermediate_size=98), path).eval()
    x = torch.randint(0, 128, (2, 11))
    assert torch.equal(reloaded(x).logits, model(x).logits)
    for (k1, v1), (k2, v2) in zip(sorted(model.state_dict().items()), sorted(reloaded.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


def test_second_adapter_and_set_adapter(tiny_llama, trained_pair, tmp_path):
    model, path = trained_pair
    other = get_peft_model(
        tiny_llama(hidden_size=72, intermediate_size=98),
        P.ProLoraConfig(r=4, unshared_r=0, reduce_lora_A_x=3, reduce_lora_B_x=1, target_modules=["q_proj", "v_proj"]),
    )
    _randomize_adapter(other, seed=7)
    other.eval()
    other.save_pretrained(tmp_path / "second")
    x = torch.randint(0, 128, (2, 5))

    combined = PeftModel.from_pretrained(tiny_llama(hidden_size=72, intermediate_size=98), path).eval()
    combined.load_adapter(tmp_path / "second", adapter_name="second")
    assert torch.equal(combined(x).logits, model(x).logits)  # loading does not activate
    combined.set_adapter("second")
    assert torch.allclose(combined(x).logits, other(x).logits, atol=1e-6)
    combined.set_adapter("default")
    assert torch.allclose(combined(x).logits, model(x).logits, atol=1e-6)


def test_merge_unmerge_disable_and_unload(tiny_llama, trained_pair):
    model, _ = trained_pair
    x = torch.randint(0, 128, (2, 9))
    base = tiny_llama(hidden_size=72, intermediate_size=98)
    with torch.no_grad():
        base_logits = base(x).logits
        adapted = model(x).logits
        assert not torch.allclose(adapted, base_logits, atol=1e-4)
        with model.disable_adapter():
            torch.testing.assert_close(model(x).logits, base_logits)
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        w0 = q.base_layer.weight.clone()
        model.merge_adapter()
        assert q.merged
        torch.testing.assert_close(model(x).logits, adapted, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(q.base_layer.weight, w0, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x).logits, adapted, rtol=1e-5, atol=1e-5)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, P.ProLoraLayer) for m in merged.modules())
        torch.testing.assert_close(merged(x).logits, adapted, rtol=1e-5, atol=1e-5)


def test_export_as_lora_loads_in_plain_peft(tiny_llama, trained_pair, tmp_path):
    model, path = trained_pair
    out = P.export_as_lora(model, tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(ATTN_MLP)
    tensors = load_file(out / "adapter_model.safetensors")
    assert tuple(tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape) == (8, 98)
    assert tuple(tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape) == (72, 8)

    # Load in a fresh interpreter that never imports open_instruct: a plain PEFT user.
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers.models import make_tiny_llama
from peft import PeftModel
m = PeftModel.from_pretrained(make_tiny_llama(hidden_size=72, intermediate_size=98), {str(out)!r}).eval()
assert type(m.peft_config["default"]).__name__ == "LoraConfig"
assert not any(k.startswith("open_instruct") for k in sys.modules)
torch.save(m(torch.arange(18).reshape(2, 9) % 128).logits, {str(tmp_path / "logits.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    with torch.no_grad():
        expected = model(torch.arange(18).reshape(2, 9) % 128).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=1e-6, atol=1e-6)


def test_export_cli(tiny_llama, trained_pair, tmp_path):
    model, path = trained_pair
    base_dir = tmp_path / "base"
    tiny_llama(hidden_size=72, intermediate_size=98).save_pretrained(base_dir)
    subprocess.run(
        [sys.executable, "-m", "prolora.export", "--base_model_name_or_path", str(base_dir),
         "--adapter_dir", str(path), "--output_dir", str(tmp_path / "cli_lora")],
        check=True, capture_output=True,
    )
    lora = PeftModel.from_pretrained(tiny_llama(hidden_size=72, intermediate_size=98), tmp_path / "cli_lora").eval()
    x = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(lora(x).logits, model(x).logits, rtol=1e-6, atol=1e-6)


def test_plain_peft_refuses_prolora_adapter(trained_pair):
    _, path = trained_pair
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers.models import make_tiny_llama
from peft import PeftModel
try:
    PeftModel.from_pretrained(make_tiny_llama(hidden_size=72, intermediate_size=98), {str(path)!r})
except Exception as e:
    print("refused:", type(e).__name__, e)
    sys.exit(0)
sys.exit("a plain peft loaded a PRoLoRA adapter")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PROLORA" in proc.stdout


def test_gradients_reach_chunks_and_unshared_only(tiny_llama):
    model = get_peft_model(
        tiny_llama(hidden_size=72, intermediate_size=98),
        P.ProLoraConfig(r=8, unshared_r=2, reduce_lora_A_x=2, reduce_lora_B_x=2, target_modules=ATTN_MLP),
    )
    _randomize_adapter(model)
    x = torch.randint(0, 128, (2, 8))
    model(x, labels=x).loss.backward()
    for name, p in model.named_parameters():
        if "prolora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_dtypes_and_autocast(tiny_llama, dtype, autocast):
    model = tiny_llama(hidden_size=72, intermediate_size=98).to(dtype)
    model = get_peft_model(model, P.ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2,
                                                  target_modules=ATTN_MLP))
    # PEFT upcasts half-precision adapters to fp32 by default, as the authors did.
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "prolora_" in n)
    _randomize_adapter(model)
    x = torch.randint(0, 128, (2, 8))
    autocast_dtype = torch.bfloat16 if dtype == torch.float32 else dtype  # CPU autocast cannot mix fp16 and bf16
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
        out = model(x, labels=x)
    assert out.logits.dtype in (dtype, torch.bfloat16, torch.float32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "prolora_" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gradient_checkpointing_gives_same_gradients(tiny_llama):
    def grads(checkpointing):
        model = tiny_llama(hidden_size=72, intermediate_size=98)
        model = get_peft_model(model, P.ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2,
                                                      target_modules=ATTN_MLP))
        _randomize_adapter(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        x = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(3))
        model(x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6)


def test_dropout_only_on_adapter_input():
    layer = torch.nn.Sequential(torch.nn.Linear(32, 16))
    model = get_peft_model(layer, P.ProLoraConfig(r=4, lora_dropout=0.5, reduce_lora_A_x=2, target_modules=["0"]))
    x = torch.randn(4, 32)
    model.train()
    # B is zero at init, so dropout cannot change the output yet: the base path never sees dropout.
    base_layer = model.base_model.model[0].base_layer
    torch.testing.assert_close(model(x), base_layer(x))
    _randomize_adapter(model)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # dropout active on the adapter branch
    model.eval()
    torch.testing.assert_close(model(x), model(x))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"r": 4, "unshared_r": 5}, "unshared_r=5 exceeds r=4"),
        ({"unshared_r": -1}, "unshared_r must be >= 0, got unshared_r=-1"),
        ({"reduce_lora_A_x": 0}, r"reduce_lora_A_x \(m\) must be >= 1, got 0"),
        ({"reduce_lora_B_x": -2}, r"reduce_lora_B_x \(n\) must be >= 1, got -2"),
        ({"r": 0}, "r must be >= 1, got r=0"),
        ({"lora_A_shift_size": -1}, "lora_A_shift_size must be None or >= 0, got -1"),
        ({"enable_lora_rotation": False, "lora_B_shift_size": 2}, "lora_B_shift_size=2 has no effect"),
        ({"lora_dropout": 1.5}, r"lora_dropout must be in \[0, 1\), got 1.5"),
        ({"r": 8.0}, "r must be an int, got 8.0"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.ProLoraConfig(target_modules=["q_proj"], **kwargs)


def test_invalid_targets(tiny_llama):
    with pytest.raises(ValueError, match="reduce_lora_A_x=100 exceeds in_features=64 of target module"):
        get_peft_model(tiny_llama(), P.ProLoraConfig(r=4, reduce_lora_A_x=100, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="reduce_lora_B_x=97 exceeds out_features=96 of target module .*up_proj"):
        get_peft_model(tiny_llama(), P.ProLoraConfig(r=4, reduce_lora_B_x=97, target_modules=["up_proj"]))
    with pytest.raises(ValueError, match="nonexistent_proj"):
        get_peft_model(tiny_llama(), P.ProLoraConfig(r=4, target_modules=["nonexistent_proj"]))


def test_all_linear_and_regex_targets(tiny_llama):
    model = get_peft_model(tiny_llama(), P.ProLoraConfig(r=4, reduce_lora_A_x=2, target_modules="all-linear"))
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, P.ProLoraLayer)}
    assert adapted == set(ATTN_MLP)  # lm_head is excluded by PEFT's all-linear rule
    model = get_peft_model(tiny_llama(), P.ProLoraConfig(r=4, target_modules=r".*layers\.1\.self_attn\.(q|v)_proj"))
    adapted = sorted(n for n, m in model.named_modules() if isinstance(m, P.ProLoraLayer))
    assert adapted == [f"base_model.model.model.layers.1.self_attn.{p}_proj" for p in "qv"]


@pytest.mark.parametrize("u,autocast", [(1, False), (0, False), (8, False), (2, True)])
def test_memory_lean_delta_matches_plain_autograd(u, autocast):
    """`prolora_delta` (rebuilds A/B again in backward) = plain autograd through the rebuild, values and grads."""
    from prolora.rebuild import prolora_delta

    torch.manual_seed(0)
    d_in, d_out, r, m, n = 72, 98, 8, 5, 3
    rs = r - u
    A0 = torch.randn(rs, chunk_width(d_in, m), requires_grad=True) if rs else None
    B0 = torch.randn(chunk_width(d_out, n), rs, requires_grad=True) if rs else None
    A_u = torch.randn(u, d_in, requires_grad=True) if u else None
    B_u = torch.randn(d_out, u, requires_grad=True) if u else None
    x = torch.randn(2, 5, d_in, requires_grad=True)
    geometry = (d_in, d_out, m, n, max(rs // m, 1), max(rs // n, 1))
    leaves = [t for t in (x, A0, A_u, B0, B_u) if t is not None]

    def run(lean):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if lean:
                y = prolora_delta(x, A0, A_u, B0, B_u, geometry, 0.5)
            else:
                A = P.rebuild_A(A0, A_u, d_in, m, geometry[4])
                B = P.rebuild_B(B0, B_u, d_out, n, geometry[5])
                y = torch.nn.functional.linear(torch.nn.functional.linear(x, A), B) * 0.5
        grads = torch.autograd.grad(y.float().square().sum(), leaves)
        return y, grads

    (y1, g1), (y2, g2) = run(True), run(False)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    assert y1.dtype == y2.dtype
    torch.testing.assert_close(y1, y2, **tol)
    for a, b in zip(g1, g2):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **(dict(rtol=5e-2, atol=5e-1) if autocast else tol))
