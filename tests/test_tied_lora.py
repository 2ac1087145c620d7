"""Tied-LoRA as a PEFT method: math, sharing, initialisation, training, save/load, merge, disable."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from open_instruct.peft_methods import LLAMA_PROJECTIONS
from open_instruct.tied_lora import TiedLoraConfig, TiedLoraLayer, shared_group_key

torch.set_num_threads(1)
PROJECTIONS = list(LLAMA_PROJECTIONS)


def tied_model(make_tiny_llama, **config_kwargs):
    config = TiedLoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": PROJECTIONS, "task_type": "CAUSAL_LM",
                               **config_kwargs})
    return get_peft_model(make_tiny_llama(), config)


def tied_layers(peft_model):
    return [(name, m) for name, m in peft_model.named_modules() if isinstance(m, TiedLoraLayer)]


def randomize_adapter(peft_model, seed=1):
    """Give every adapter factor (also the zero-initialised one) a non-trivial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "tied_lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (1.0 if param.ndim == 1 else 0.0))


def tokens(batch=2, length=7):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(0))


def test_layers_reference_one_shared_pair_per_projection(tiny_llama):
    model = tied_model(tiny_llama)
    tuner = model.base_model
    layers = tied_layers(model)
    assert len(layers) == 2 * len(PROJECTIONS)
    for _, layer in layers:
        key = layer.shared_key["default"]
        assert layer.tied_lora_A["default"] is tuner.tied_lora_A["default"][key]
        assert layer.tied_lora_B["default"] is tuner.tied_lora_B["default"][key]
    # one pair per projection type; k/v have out 32 (2 KV heads x 16), q/o 64, gate/up 96, down in 96
    assert sorted(tuner.tied_lora_A["default"].keys()) == sorted(
        [shared_group_key("q_proj", 64, 64), shared_group_key("k_proj", 64, 32), shared_group_key("v_proj", 64, 32),
         shared_group_key("o_proj", 64, 64), shared_group_key("gate_proj", 64, 96),
         shared_group_key("up_proj", 64, 96), shared_group_key("down_proj", 96, 64)])


def test_trainable_count_matches_closed_form(tiny_llama):
    model = tied_model(tiny_llama)
    r, L = 4, 2
    shapes = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
              "gate_proj": (64, 96), "up_proj": (64, 96), "down_proj": (96, 64)}
    shared = sum(r * (d_in + d_out) for d_in, d_out in shapes.values())
    expected = shared + L * sum(r + d_out for _, d_out in shapes.values())
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == expected == 4664


def test_forward_matches_formula(tiny_llama):
    model = tied_model(tiny_llama, lora_alpha=6)
    randomize_adapter(model)
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    x = torch.randn(3, 5, 96)
    A, B = layer.tied_lora_A["default"], layer.tied_lora_B["default"]
    u, v = layer.tied_lora_u["default"], layer.tied_lora_v["default"]
    expected = layer.base_layer(x) + (6 / 4) * torch.einsum("o,or,r,ri,bsi->bso", v, B, u, A, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.get_delta_weight("default"), (6 / 4) * torch.diag(v) @ B @ torch.diag(u) @ A)


@pytest.mark.parametrize("switches, zeroed", [
    ({}, "B"),
    ({"train_B": False}, "v"),
    ({"train_B": False, "train_v": False}, "u"),
    ({"train_B": False, "train_v": False, "train_u": False}, "A"),
])
def test_init_is_identity_and_zero_factor_gets_gradient(tiny_llama, switches, zeroed):
    base_logits = tiny_llama()(tokens()).logits
    model = tied_model(tiny_llama, **switches)
    torch.testing.assert_close(model(tokens()).logits, base_logits, rtol=0, atol=0)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    factor = getattr(layer, f"tied_lora_{zeroed}")["default"]
    assert torch.count_nonzero(factor) == 0 and factor.requires_grad
    model(tokens(), labels=tokens()).loss.backward()
    assert factor.grad is not None and factor.grad.abs().sum() > 0
    for name in "ABuv":
        trained = name in zeroed or switches.get(f"train_{name}", True)
        assert getattr(layer, f"tied_lora_{name}")["default"].requires_grad == trained


def test_frozen_parts_stay_frozen_and_counts_drop(tiny_llama):
    full = tied_model(tiny_llama).get_nb_trainable_parameters()[0]
    model = tied_model(tiny_llama, train_A=False, train_B=False)
    shared = sum(p.numel() for p in model.base_model.tied_lora_A["default"].values())
    shared += sum(p.numel() for p in model.base_model.tied_lora_B["default"].values())
    assert model.get_nb_trainable_parameters()[0] == full - shared
    model.set_adapter("default")  # re-activating must not unfreeze them
    assert not any(p.requires_grad for p in model.base_model.tied_lora_A["default"].values())


def test_training_step_updates_the_shared_matrix_once(tiny_llama):
    model = tied_model(tiny_llama)
    randomize_adapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len({id(p) for p in params}) == len(params)  # each shared matrix appears once
    optimizer = torch.optim.SGD(params, lr=0.05)
    loss_before = model(tokens(), labels=tokens()).loss
    loss_before.backward()
    optimizer.step()
    loss_after = model(tokens(), labels=tokens()).loss
    assert loss_after < loss_before
    q0 = model.base_model.model.model.layers[0].self_attn.q_proj
    q1 = model.base_model.model.model.layers[1].self_attn.q_proj
    assert q0.tied_lora_A["default"] is q1.tied_lora_A["default"]  # still tied after the step


def test_save_stores_shared_matrices_once_and_reload_is_bit_exact(tiny_llama, tmp_path):
    model = tied_model(tiny_llama)
    randomize_adapter(model)
    logits = model(tokens()).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    shared_keys = [k for k in saved if ".tied_lora_A." in k or ".tied_lora_B." in k]
    assert len(shared_keys) == 2 * len(PROJECTIONS) and all(k.startswith("base_model.tied_lora_") for k in shared_keys)
    assert sum(".tied_lora_u" in k for k in saved) == 2 * len(PROJECTIONS)

    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(reloaded(tokens()).logits, logits)
    tuner = reloaded.base_model
    for _, layer in tied_layers(reloaded):
        assert layer.tied_lora_A["default"] is tuner.tied_lora_A["default"][layer.shared_key["default"]]


def test_reload_for_training_keeps_the_tie(tiny_llama, tmp_path):
    model = tied_model(tiny_llama)
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert reloaded.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()
    reloaded(tokens(), labels=tokens()).loss.backward()
    shared_A = reloaded.base_model.tied_lora_A["default"][shared_group_key("q_proj", 64, 64)]
    assert shared_A.grad is not None and shared_A.grad.abs().sum() > 0


def test_merge_and_unload_and_disable_adapter(tiny_llama):
    base_logits = tiny_llama()(tokens()).logits
    model = tied_model(tiny_llama)
    randomize_adapter(model)
    logits = model(tokens()).logits
    assert not torch.allclose(logits, base_logits, atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(model(tokens()).logits, base_logits, rtol=0, atol=0)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, TiedLoraLayer) for m in merged.modules())
    torch.testing.assert_close(merged(tokens()).logits, logits, rtol=1e-4, atol=1e-5)


def test_projections_of_different_shapes_get_their_own_pair():
    class Block(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.proj = nn.Linear(d_in, d_out)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    net = nn.Sequential(Block(8, 8), Block(8, 8), Block(8, 16))
    model = get_peft_model(net, TiedLoraConfig(r=2, target_modules=["proj"]))
    bank = model.base_model.tied_lora_A["default"]
    assert sorted(bank.keys()) == ["proj_out16_in8", "proj_out8_in8"]
    assert net[0].proj.tied_lora_A["default"] is net[1].proj.tied_lora_A["default"]
    assert net[2].proj.tied_lora_A["default"] is not net[0].proj.tied_lora_A["default"]
    assert model(torch.randn(3, 8)).shape == (3, 16)


def test_bf16_base_model_without_autocast_keeps_bf16_tied_adapter(tiny_llama):
    config = TiedLoraConfig(r=4, target_modules=PROJECTIONS)
    model = get_peft_model(tiny_llama().to(torch.bfloat16), config, autocast_adapter_dtype=False)
    bank = model.base_model.tied_lora_A["default"]
    for _, layer in tied_layers(model):
        assert layer.tied_lora_A["default"] is bank[layer.shared_key["default"]]
        assert layer.tied_lora_A["default"].dtype == layer.tied_lora_v["default"].dtype == torch.bfloat16
    assert model(tokens()).logits.dtype == torch.bfloat16


def test_bf16_base_model_keeps_float32_adapter(tiny_llama):
    model = get_peft_model(tiny_llama().to(torch.bfloat16), TiedLoraConfig(r=4, target_modules=PROJECTIONS))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.tied_lora_A["default"].dtype == torch.float32
    assert layer.tied_lora_A["default"] is model.base_model.tied_lora_A["default"][layer.shared_key["default"]]
    assert model(tokens()).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r must be"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"bias": "all"}, "bias"),
    ({"train_A": False, "train_B": False, "train_u": False, "train_v": False}, "at least one"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TiedLoraConfig(**kwargs)


def test_low_cpu_mem_usage_loads_tied_weights(tiny_llama, tmp_path):
    model = tied_model(tiny_llama)
    randomize_adapter(model)
    expected = model(tokens()).logits
    model.save_pretrained(tmp_path)
    empty = get_peft_model(tiny_llama(), TiedLoraConfig(r=4, target_modules=PROJECTIONS), low_cpu_mem_usage=True)
    assert all(p.device.type == "meta" for n, p in empty.named_parameters() if "tied_lora_" in n)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, low_cpu_mem_usage=True)
    torch.testing.assert_close(loaded(tokens()).logits, expected)
    bank = loaded.base_model.tied_lora_A["default"]
    for _, layer in tied_layers(loaded):
        assert layer.tied_lora_A["default"] is bank[layer.shared_key["default"]]  # still one tensor per projection


def test_two_adapters_switch_and_delete(tiny_llama, tmp_path):
    first, second = tied_model(tiny_llama), tied_model(tiny_llama)
    randomize_adapter(first, seed=1)
    randomize_adapter(second, seed=2)
    expected_first, expected_second = first(tokens()).logits, second(tokens()).logits
    first.save_pretrained(tmp_path / "a")
    second.save_pretrained(tmp_path / "b")
    model = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", is_trainable=True)
    model.load_adapter(tmp_path / "b", adapter_name="second")
    assert torch.equal(model(tokens()).logits, expected_first)
    model.set_adapter("second")
    assert torch.equal(model(tokens()).logits, expected_second)
    assert model.get_nb_trainable_parameters()[0] == 4664  # only the active adapter trains
    model.delete_adapter("default")
    assert list(model.base_model.tied_lora_A.keys()) == ["second"]
    assert torch.equal(model(tokens()).logits, expected_second)


def test_qlora_base_layers(tiny_llama, tmp_path):
    """On a bitsandbytes 4-bit base (QLoRA) the adapter trains, and saves/reloads exactly."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(hidden_size=128, intermediate_size=256).save_pretrained(tmp_path / "base")  # bnb wants 64-multiples
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)

    def load_base():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization)

    model = get_peft_model(load_base(), TiedLoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    randomize_adapter(model)
    model(tokens(), labels=tokens()).loss.backward()
    assert all(p.grad is not None for p in model.base_model.tied_lora_A["default"].values())
    with torch.no_grad():
        logits = model(tokens()).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_base(), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(reloaded(tokens()).logits, logits)
