"""MoS adapter: the rule against a loop-by-loop reference of the paper's equations, LoRA equivalence, the shard
selection rules, compact save/reload, merge, export, parameter count and bad configs.

The reference below reads only the pools and index tensors (data) and the equations
``A[k, i*w_A + j] = P_A[I_A[k*l + i], j]``, ``B[i*w_B + j, k] = P_B[I_B[k*l + i], j]`` (cut at d_in / d_out),
``y = W0 x + (alpha / r) B A x``; it never calls `prolora.mos.rebuild`.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from helpers.models import make_tiny_llama
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch.func import functional_call

import prolora
from prolora.mos import MosConfig, MosLayer, count_mos_params, export_mos_as_lora

torch.set_num_threads(1)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# hidden 40 (kv dims 20), intermediate 50: nothing below is divisible by every l used.
DIMS = {"hidden_size": 40, "intermediate_size": 50, "num_layers": 3}


def tiny(seed: int = 0):
    return make_tiny_llama(**DIMS, seed=seed)


CASES = {
    "all_on_l3_p1": dict(r=4, mos_r=2, private_r=1, shards_per_vector=3, target_modules=ALL),
    "l7_no_private": dict(r=5, mos_r=2, shards_per_vector=7, target_modules=["q_proj", "v_proj", "down_proj"]),
    "no_dissociation_no_subset": dict(r=3, mos_r=2, shards_per_vector=2, pair_dissociation=False,
                                      subset_selection=False, target_modules=["k_proj", "up_proj"]),
    "layer_pools_l4": dict(r=2, mos_r=3, private_r=1, shards_per_vector=4, global_pool=False,
                           target_modules=["o_proj", "gate_proj"]),
    "l1_private_only": dict(r=3, mos_r=3, private_r=3, target_modules=["q_proj", "down_proj"]),
}


def adapted(case: str, seed: int = 1, **changes):
    torch.manual_seed(seed)
    config = MosConfig(**(CASES[case] | {"lora_alpha": 6, "init_weights": False} | changes))
    return get_peft_model(tiny(), config).eval()


def mos_layers(model) -> list[tuple[str, MosLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MosLayer)]


# --------------------------------------------------------------------------- loop-by-loop reference


def reference_factors(pool_A, pool_B, index_A, index_B, d_in, d_out, r, l):  # noqa: E741
    """A (r, d_in) and B (d_out, r) entry by entry; differentiable w.r.t. the pools (a stack of scalars)."""
    w_A, w_B = math.ceil(d_in / l), math.ceil(d_out / l)
    A = [[None] * d_in for _ in range(r)]
    B = [[None] * r for _ in range(d_out)]
    for k in range(r):
        for i in range(l):
            for j in range(w_A):
                if i * w_A + j < d_in:
                    A[k][i * w_A + j] = pool_A[int(index_A[k * l + i]), j]
            for j in range(w_B):
                if i * w_B + j < d_out:
                    B[i * w_B + j][k] = pool_B[int(index_B[k * l + i]), j]
    return torch.stack([torch.stack(row) for row in A]), torch.stack([torch.stack(row) for row in B])


def reference_logits(model, input_ids, leaves: dict[str, torch.Tensor]):
    """The un-adapted model run with ``W = W0 + (alpha / r) B A`` per adapted layer, A and B from
    `reference_factors` on ``leaves`` (copies of the pools keyed by the tuner's parameter name)."""
    base = tiny().double()
    weights = dict(base.named_parameters())
    config = model.peft_config["default"]
    for name, layer in mos_layers(model):
        key = layer.pool_key["default"]
        A, B = reference_factors(leaves[f"A.{key}"], leaves[f"B.{key}"], layer.mos_index_A["default"],
                                 layer.mos_index_B["default"], layer.in_features, layer.out_features, config.r,
                                 config.shards_per_vector)
        target = name.removeprefix("base_model.model.") + ".weight"
        weights[target] = weights[target] + (config.lora_alpha / config.r) * (B @ A)
    return functional_call(base, weights, (input_ids,)).logits


def pool_leaves(model) -> dict[str, torch.Tensor]:
    tuner = model.base_model
    leaves = {}
    for part, bank in (("A", tuner.mos_pool_A["default"]), ("B", tuner.mos_pool_B["default"])):
        for key, p in bank.items():
            leaves[f"{part}.{key}"] = p.detach().clone().requires_grad_(True)
    return leaves


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_gradients_and_export_match_the_loop_reference(case, tmp_path):
    model = adapted(case).double()  # float64, so equality is to ~1e-12 and not blurred by float32 roundoff
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    leaves = pool_leaves(model)
    expected = reference_logits(model, ids, leaves)
    model.train()  # dropout is 0: train mode only enables gradients as in training
    got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)

    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (got * weight).sum().backward()
    (expected * weight).sum().backward()
    tuner = model.base_model
    for part, bank in (("A", tuner.mos_pool_A["default"]), ("B", tuner.mos_pool_B["default"])):
        for key, p in bank.items():
            assert p.grad is not None and p.grad.abs().sum() > 0
            torch.testing.assert_close(p.grad, leaves[f"{part}.{key}"].grad, rtol=1e-9, atol=1e-11)

    config = model.peft_config["default"]
    exported = load_file(export_mos_as_lora(model, tmp_path / "lora") / "adapter_model.safetensors")
    for name, layer in mos_layers(model):
        key = layer.pool_key["default"]
        A, B = reference_factors(leaves[f"A.{key}"], leaves[f"B.{key}"], layer.mos_index_A["default"],
                                 layer.mos_index_B["default"], layer.in_features, layer.out_features, config.r,
                                 config.shards_per_vector)
        assert torch.equal(exported[f"{name}.lora_A.weight"], A.detach())
        assert torch.equal(exported[f"{name}.lora_B.weight"], B.detach())
    lora = PeftModel.from_pretrained(tiny().double(), tmp_path / "lora").eval()
    model.eval()
    torch.testing.assert_close(lora(ids).logits, model(ids).logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_shard_selection_rules(case):
    model = adapted(case)
    config = model.peft_config["default"]
    r, R, p, l = config.r, config.mos_r, config.private_r, config.shards_per_vector  # noqa: E741
    groups: dict[str, list[MosLayer]] = {}
    for _, layer in mos_layers(model):
        groups.setdefault(layer.pool_key["default"], []).append(layer)
    for key, layers in groups.items():
        L = 1 if not config.global_pool else len(layers)
        assert config.global_pool or len(layers) == 1
        n_shared = (R - p) * L * l
        assert model.base_model.mos_pool_A["default"][key].shape[0] == R * L * l
        for ordinal, layer in enumerate(layers):
            for index in (layer.mos_index_A["default"], layer.mos_index_B["default"]):
                assert index.shape == (r * l,) and index.dtype == torch.long
                shared, private = index[: (r - p) * l], index[(r - p) * l:]
                assert len(set(shared.tolist())) == len(shared)  # distinct shards within a layer
                assert all(0 <= i < n_shared for i in shared.tolist())
                start = n_shared + ordinal * p * l
                assert private.tolist() == list(range(start, start + p * l))
            same = torch.equal(layer.mos_index_A["default"], layer.mos_index_B["default"])
            if not config.pair_dissociation:
                assert same
            if not config.subset_selection:
                assert layer.mos_index_A["default"][: (r - p) * l].tolist() == list(range((r - p) * l))


def test_random_selection_and_dissociation_differ_between_layers_and_factors():
    model = adapted("all_on_l3_p1", r=6, mos_r=4, private_r=0)
    layers = [layer for _, layer in mos_layers(model) if layer.pool_key["default"].startswith("q_proj")]
    indices_A = [tuple(layer.mos_index_A["default"].tolist()) for layer in layers]
    assert len(set(indices_A)) == len(layers)  # subset selection: each layer its own subset
    assert any(not torch.equal(layer.mos_index_A["default"], layer.mos_index_B["default"]) for layer in layers)


def test_reduces_to_lora_without_sharing():
    """global_pool off, subset selection off, l = 1, p = 0, r = R: every layer's A is its pool, B its pool^T."""
    torch.manual_seed(1)
    config = MosConfig(r=3, mos_r=3, global_pool=False, subset_selection=False, lora_alpha=5, target_modules=ALL,
                       init_weights=False)
    model = get_peft_model(tiny(), config).eval()
    lora = get_peft_model(tiny(), LoraConfig(r=3, lora_alpha=5, target_modules=ALL)).eval()
    lora_modules = dict(lora.named_modules())
    with torch.no_grad():
        for name, layer in mos_layers(model):
            assert layer.mos_index_A["default"].tolist() == [0, 1, 2] == layer.mos_index_B["default"].tolist()
            lora_modules[name].lora_A["default"].weight.copy_(layer.mos_pool_A["default"])
            lora_modules[name].lora_B["default"].weight.copy_(layer.mos_pool_B["default"].t())
    ids = torch.randint(0, 128, (2, 5))
    torch.testing.assert_close(model(ids).logits, lora(ids).logits, rtol=1e-6, atol=1e-6)
    assert model.get_nb_trainable_parameters()[0] == lora.get_nb_trainable_parameters()[0]


def test_init_is_identity_with_lora_bounds():
    torch.manual_seed(0)
    model = get_peft_model(tiny(), MosConfig(r=4, mos_r=2, shards_per_vector=3, target_modules=ALL)).eval()
    ids = torch.randint(0, 128, (2, 5))
    torch.testing.assert_close(model(ids).logits, tiny()(ids).logits)
    tuner = model.base_model
    for key, pool in tuner.mos_pool_A["default"].items():
        d_in = int(key.rsplit("_in", 1)[1])
        assert pool.abs().max() <= 1 / math.sqrt(d_in) and pool.abs().max() > 0.5 / math.sqrt(d_in)
    assert all(torch.count_nonzero(p) == 0 for p in tuner.mos_pool_B["default"].values())


@pytest.mark.parametrize("case", ["all_on_l3_p1", "layer_pools_l4"])
def test_save_reload_is_bit_exact_and_stores_each_pool_once(case, tmp_path):
    model = adapted(case)
    ids = torch.randint(0, 128, (2, 5))
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    pools = [k for k in saved if ".mos_pool_" in k]
    groups = {layer.pool_key["default"] for _, layer in mos_layers(model)}
    assert len(pools) == 2 * len(groups)
    assert all(k.startswith("base_model.mos_pool_") for k in pools)  # on the tuner, never under a layer
    assert sum(saved[k].numel() for k in pools) == model.get_nb_trainable_parameters()[0]
    loaded = PeftModel.from_pretrained(tiny(), tmp_path).eval()
    assert torch.equal(loaded(ids).logits, expected)
    for (_name, layer), (_, again) in zip(mos_layers(model), mos_layers(loaded), strict=True):
        assert torch.equal(layer.mos_index_A["default"], again.mos_index_A["default"])
        assert again.mos_pool_A["default"] is loaded.base_model.mos_pool_A["default"][layer.pool_key["default"]]
    trainable = PeftModel.from_pretrained(tiny(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()


def test_training_step_updates_one_shared_pool():
    model = adapted("all_on_l3_p1").train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == 2 * len(model.base_model.mos_pool_A["default"])
    model(torch.randint(0, 128, (2, 5))).logits.pow(2).mean().backward()
    optimizer.step()
    for _, layer in mos_layers(model):  # still the tuner's objects after a step
        assert layer.mos_pool_B["default"] is model.base_model.mos_pool_B["default"][layer.pool_key["default"]]


@pytest.mark.parametrize("case", ["all_on_l3_p1", "no_dissociation_no_subset"])
def test_merge_equals_unmerged_forward(case):
    model = adapted(case)
    ids = torch.randint(0, 128, (2, 5))
    expected = model(ids).logits
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, MosLayer) for m in merged.modules())
    torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)
    model.merge_adapter()
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(model(ids).logits, tiny()(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_count_matches_the_formula(case):
    model = adapted(case)
    config = model.peft_config["default"]
    l, R = config.shards_per_vector, config.mos_r  # noqa: E741
    hidden, inter, layers = DIMS["hidden_size"], DIMS["intermediate_size"], DIMS["num_layers"]
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden // 2), "v_proj": (hidden, hidden // 2),
            "o_proj": (hidden, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}
    # one pool per projection type over all layers = per layer R * l * (ceil(d_in/l) + ceil(d_out/l)), either way
    formula = sum(layers * R * l * (math.ceil(dims[t][0] / l) + math.ceil(dims[t][1] / l))
                  for t in config.target_modules)
    assert model.get_nb_trainable_parameters()[0] == formula == count_mos_params(tiny(), config)


@pytest.mark.parametrize("changes,match", [
    (dict(r=0), "r must be >= 1, got r=0"),
    (dict(mos_r=0), "mos_r must be >= 1"),
    (dict(r=2.5), "r must be an int, got 2.5"),
    (dict(private_r=5, r=4), "private_r=5 exceeds r=4"),
    (dict(private_r=3, mos_r=2, r=4), "private_r=3 exceeds mos_r=2"),
    (dict(private_r=2, mos_r=2, r=4), "private_r=mos_r=2 leaves no shared shards"),
    (dict(shards_per_vector=0), "shards_per_vector must be >= 1"),
    (dict(global_pool=False, r=4, mos_r=2), "global_pool=False gives each layer a pool of mos_r=2"),
    (dict(subset_selection="yes"), "subset_selection must be True or False"),
    (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
    (dict(bias="all"), "bias must be 'none'"),
])
def test_bad_configs_raise_one_line_naming_the_value(changes, match):
    with pytest.raises(ValueError, match=match) as err:
        MosConfig(**({"r": 4, "mos_r": 2} | changes))
    assert "\n" not in str(err.value) and str(err.value).startswith("MosConfig: ")


def test_bad_configs_raise_at_build_time():
    with pytest.raises(ValueError, match=r"r=8 with private_r=0 needs 8 shared shards .* has only .* = 3"):
        get_peft_model(tiny(), MosConfig(r=8, mos_r=1, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="shards_per_vector=30 exceeds out_features=20"):
        get_peft_model(tiny(), MosConfig(r=2, mos_r=1, shards_per_vector=30, target_modules=["k_proj"]))


def test_registered_peft_type_and_export_refuses_other_adapters(tmp_path):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING["MOS"] is MosConfig and prolora.MosConfig is MosConfig
    lora = get_peft_model(tiny(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not MoS"):
        export_mos_as_lora(lora, tmp_path / "x")


def test_mixed_batch_rows_get_their_own_adapter():
    model = adapted("all_on_l3_p1")
    torch.manual_seed(9)
    model.add_adapter("other", MosConfig(**(CASES["l7_no_private"] | {"init_weights": False})))
    model.eval()
    ids = torch.randint(0, 128, (3, 5))
    first = model(ids).logits
    model.set_adapter("other")
    second = model(ids).logits
    with model.disable_adapter():
        base = model(ids).logits
    expected = torch.stack([second[0], base[1], first[2]])
    mixed = model(ids, adapter_names=["other", "__base__", "default"]).logits
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the per-call cache of assembled A/B (a generate's decoding steps)
        mixed = model(ids, adapter_names=["other", "__base__", "default"]).logits
        again = model.generate(ids, adapter_names=["other", "__base__", "default"], max_new_tokens=3,
                               do_sample=False, pad_token_id=0)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    assert again.shape == (3, 8) and all(layer.mixed_batch_cache is None for _, layer in mos_layers(model))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(5))
    grads = []
    for checkpointing in (False, True):
        model = adapted("all_on_l3_p1").train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_on_a_4bit_base_it_trains_merges_and_exports(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_tiny_llama(hidden_size=128, intermediate_size=192, num_layers=3).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")
    torch.manual_seed(1)
    model = get_peft_model(base, MosConfig(**(CASES["all_on_l3_p1"] | {"init_weights": False})))
    assert isinstance(mos_layers(model)[0][1].base_layer, bnb.nn.Linear4bit)
    ids = torch.randint(0, 128, (2, 5))
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.eval()
    load = partial(AutoModelForCausalLM.from_pretrained, tmp_path / "base", quantization_config=quant,
                   device_map="cpu")
    with torch.no_grad():
        expected = model(ids).logits
        export_mos_as_lora(model, tmp_path / "lora")
        lora = PeftModel.from_pretrained(load(), tmp_path / "lora").eval()
        torch.testing.assert_close(lora(ids).logits, expected, rtol=1e-5, atol=1e-5)
        # merging dequantizes, adds dW and re-quantizes: W_after = W_before + dW up to NF4's rounding
        q = mos_layers(model)[0][1]
        before, delta = q.get_base_weight().clone(), q.get_delta_weight("default")
        model.merge_adapter()
        assert (q.get_base_weight() - (before + delta)).abs().mean() < 0.25 * delta.abs().mean()
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_delta_gradients_with_and_without_dropout(p):
    """`mos_delta` (LoRA's activation memory: A and B assembled again in backward) against finite differences;
    the seed is reset before every evaluation so dropout draws the same entries each time."""
    from prolora.mos.rebuild import mos_delta

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    result = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    pool_A = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)  # l = 2: w_A = ceil(7/2)
    pool_B = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)  # w_B = ceil(5/2)
    index_A, index_B = torch.tensor([3, 0, 7, 3, 1, 5]), torch.tensor([2, 6, 4, 0, 1, 3])  # r = 3; shard 3 twice

    def f(x, result, pool_A, pool_B):
        torch.manual_seed(11)
        return mos_delta(x, pool_A, pool_B, index_A, index_B, 7, 5, 2, 0.7, result, p)

    assert torch.autograd.gradcheck(f, (x, result, pool_A, pool_B))
    if p == 0:
        A = reference_factors(pool_A, pool_B, index_A, index_B, 7, 5, 3, 2)[0]
        B = reference_factors(pool_A, pool_B, index_A, index_B, 7, 5, 3, 2)[1]
        torch.testing.assert_close(f(x, result, pool_A, pool_B), result + 0.7 * x @ A.t() @ B.t())
    else:
        torch.manual_seed(11)
        dropped = f(x, result, pool_A, pool_B) - result
        assert not torch.allclose(dropped, mos_delta(x, pool_A, pool_B, index_A, index_B, 7, 5, 2, 0.7))


def test_zero3_path_gives_the_fused_paths_output_and_gradients(monkeypatch):
    """Pools that carry ``ds_id`` (DeepSpeed ZeRO-3's mark on a partitioned parameter) take plain autograd through
    the gather, with the fused path's dropout draws: for one seed, the same output and pool gradients, every layer
    reading the shared pools. (Under DeepSpeed itself: tests/test_mos_zero3.py.)"""
    torch.manual_seed(0)
    config = MosConfig(r=4, mos_r=3, private_r=1, shards_per_vector=3, lora_dropout=0.3, init_weights=False,
                       target_modules=["q_proj", "down_proj"])
    model = get_peft_model(make_tiny_llama(hidden_size=48, intermediate_size=70), config)
    model.train()
    pools = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, 128, (2, 7))

    def step():
        torch.manual_seed(7)
        logits = model(ids).logits
        return logits.detach(), torch.autograd.grad(logits.square().mean(), pools)

    fused_logits, fused_grads = step()
    for pool in pools:
        pool.ds_id = 0
    assembled = []
    original = MosLayer.assemble
    monkeypatch.setattr(MosLayer, "assemble", lambda self, name: assembled.append(name) or original(self, name))
    zero3_logits, zero3_grads = step()
    assert len(assembled) == 4  # q_proj and down_proj of both layers took the ZeRO-3 branch
    torch.testing.assert_close(zero3_logits, fused_logits, rtol=1e-5, atol=1e-6)
    for got, want in zip(zero3_grads, fused_grads):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
