"""Mixed-adapter batches (`model(..., adapter_names=[...])`, PEFT's API) for PRoLoRA and Tied-LoRA."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from peft import LoraConfig, get_peft_model

import prolora
from open_instruct.tied_lora import TiedLoraConfig
from prolora import ProLoraConfig
from prolora.rebuild import _INDEX_CACHE

# Adapters of different geometry: (r, u, m, n), one without rotation, one with no unshared ranks.
PROLORA_ADAPTERS = {
    "alpha": dict(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2),
    "beta": dict(r=4, unshared_r=0, reduce_lora_A_x=4, reduce_lora_B_x=2),
    "gamma": dict(r=6, unshared_r=2, reduce_lora_A_x=3, reduce_lora_B_x=3, enable_lora_rotation=False),
    "delta": dict(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2),  # alpha's geometry: rebuilt together
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _randomize(model, prefix: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if prefix in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def prolora_model(make_tiny_llama, adapters=PROLORA_ADAPTERS):
    model = None
    for name, kwargs in adapters.items():
        config = ProLoraConfig(lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM", **kwargs)
        if model is None:
            model = get_peft_model(make_tiny_llama(), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    _randomize(model, "prolora_", seed=1)
    return model.eval()


def tied_model(make_tiny_llama):
    model = get_peft_model(make_tiny_llama(), TiedLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS),
                           adapter_name="t1")
    model.add_adapter("t2", TiedLoraConfig(r=6, lora_alpha=6, target_modules=["q_proj", "v_proj"]))
    _randomize(model, "tied_lora_", seed=2)
    return model.eval()


def lora_model(make_tiny_llama):
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=TARGETS), adapter_name="alpha")
    model.add_adapter("beta", LoraConfig(r=2, target_modules=["q_proj"]))
    return model.eval()


def tokens(batch: int, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def per_adapter_logits(model, input_ids, names):
    """Reference: every row run with its adapter alone active (``__base__``: adapters disabled)."""
    rows = []
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                rows.append(model(input_ids[i:i + 1]).logits)
        else:
            model.set_adapter(name)
            rows.append(model(input_ids[i:i + 1]).logits)
    return torch.cat(rows)


@pytest.mark.parametrize("build, names", [
    (prolora_model, ["alpha", "beta", "__base__", "gamma", "delta", "alpha", "beta"]),
    (tied_model, ["t1", "__base__", "t2", "t1"]),
])
def test_mixed_batch_rows_equal_each_adapter_alone(tiny_llama, build, names):
    model = build(tiny_llama)
    model.eval()
    input_ids = tokens(len(names))
    with torch.no_grad():
        mixed = model(input_ids, adapter_names=names).logits
        reference = per_adapter_logits(model, input_ids, names)
        with model.disable_adapter():
            base = model(input_ids).logits
    assert (mixed - reference).abs().max().item() <= 1e-5
    adapted = [i for i, name in enumerate(names) if name != "__base__"]
    # the adapters do change those rows (so the comparison above is not vacuous)
    assert (mixed[adapted] - base[adapted]).abs().amax(dim=(1, 2)).min().item() > 1e-3


def test_each_adapter_is_rebuilt_once_per_forward(tiny_llama):
    model = prolora_model(tiny_llama)
    names = ["alpha", "gamma", "delta", "__base__", "alpha", "gamma", "alpha"]
    with torch.no_grad(), \
            mock.patch.object(prolora.Linear, "rebuild", autospec=True, side_effect=prolora.Linear.rebuild) as one, \
            mock.patch.object(prolora.Linear, "rebuild_stacked", autospec=True,
                              side_effect=prolora.Linear.rebuild_stacked) as stacked:
        model(tokens(len(names)), adapter_names=names)
    calls = [call.args[1] for call in one.call_args_list]
    calls += [name for call in stacked.call_args_list for name in call.args[1]]
    layers = sum(isinstance(m, prolora.Linear) for m in model.modules())
    assert sorted(set(calls)) == ["alpha", "delta", "gamma"]
    assert all(calls.count(name) == layers for name in ("alpha", "delta", "gamma"))
    # alpha and delta share a geometry: one stacked rebuild per layer serves both
    assert len(stacked.call_args_list) == layers


def test_generate_rebuilds_once_per_call_and_keeps_nothing(tiny_llama):
    """All decoding steps of one generate share the rebuilt A/B; afterwards no layer holds them."""
    model = prolora_model(tiny_llama)
    names = ["alpha", "gamma", "__base__", "delta"]
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad(), \
            mock.patch.object(prolora.Linear, "rebuild", autospec=True, side_effect=prolora.Linear.rebuild) as one, \
            mock.patch.object(prolora.Linear, "rebuild_stacked", autospec=True,
                              side_effect=prolora.Linear.rebuild_stacked) as stacked:
        model.generate(input_ids=tokens(len(names), length=5, seed=4), adapter_names=names, **settings)
    layers = [m for m in model.modules() if isinstance(m, prolora.Linear)]
    assert [call.args[1] for call in one.call_args_list].count("gamma") == len(layers)  # 5 steps, 1 rebuild each
    assert len(stacked.call_args_list) == len(layers)  # alpha + delta
    assert all(layer.mixed_batch_cache is None for layer in layers)
    with torch.enable_grad():  # with gradients on, every forward rebuilds (nothing is cached)
        logits = model(tokens(2), adapter_names=["alpha", "alpha"]).logits
    assert logits.requires_grad and all(layer.mixed_batch_cache is None for layer in layers)


@pytest.mark.parametrize("build, names, num_beams", [
    (prolora_model, ["beta", "__base__", "alpha"], 1),
    (prolora_model, ["alpha", "gamma"], 2),  # beam search repeats each row's name per beam
    (tied_model, ["t2", "t1", "__base__"], 1),
])
def test_generate_with_adapter_names(tiny_llama, build, names, num_beams):
    model = build(tiny_llama)
    input_ids = tokens(len(names), length=5, seed=3)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=num_beams, pad_token_id=0)
    with torch.no_grad():
        mixed = model.generate(input_ids=input_ids, adapter_names=names, **settings)
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model.generate(input_ids=input_ids[i:i + 1], **settings)
            else:
                model.set_adapter(name)
                alone = model.generate(input_ids=input_ids[i:i + 1], **settings)
            assert torch.equal(mixed[i], alone[0]), (name, mixed[i], alone[0])


@pytest.mark.parametrize("build", [prolora_model, tied_model, lora_model])
def test_errors_match_lora(tiny_llama, build):
    """Every error is the one PEFT's LoRA raises (the lora_model case checks that the messages are PEFT's)."""
    model = build(tiny_llama)
    name = next(iter(model.peft_config))
    input_ids = tokens(2)
    with pytest.raises(ValueError, match="Length of `adapter_names` should be the same"):
        model(input_ids, adapter_names=[name])
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(input_ids, adapter_names=[name, "no_such_adapter"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(input_ids, adapter_names=[name, "__base__"])
    model.eval()
    model.set_adapter(name)
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged adapters"):
        model(input_ids, adapter_names=[name, "__base__"])
    model.unmerge_adapter()
    model(input_ids, adapter_names=[name, "__base__"])  # and it works again once unmerged


def test_many_compact_adapters_stay_compact(tiny_llama):
    """Two dozen adapters: only their chunks are resident, and serving them adds no per-adapter state."""
    adapters = {f"task{i}": dict(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2) for i in range(24)}
    model = prolora_model(tiny_llama, adapters)
    base = tiny_llama()
    expected = prolora.count_adapter_params(base, ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2,
                                                                 reduce_lora_B_x=2, target_modules=TARGETS))
    before = {k: v.numel() for k, v in model.state_dict().items()}
    adapter_numel = sum(n for k, n in before.items() if "prolora_" in k)
    assert adapter_numel == 24 * expected
    cache_before = len(_INDEX_CACHE)
    names = list(adapters) + ["__base__"]
    input_ids = tokens(len(names))
    with torch.no_grad():
        mixed = model(input_ids, adapter_names=names).logits
        reference = per_adapter_logits(model, input_ids, names)
    assert (mixed - reference).abs().max().item() <= 1e-5
    assert {k: v.numel() for k, v in model.state_dict().items()} == before
    # the gather-index cache is keyed by geometry: 24 identical adapters add at most one entry per geometry
    geometries = {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, prolora.Linear)}
    assert len(_INDEX_CACHE) - cache_before <= 2 * len(geometries)
