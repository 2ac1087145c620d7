"""The behaviours PEFT's own test suite checks for every method, run over several PRoLoRA, MoS and Tied-LoRA configs.

A small model with odd dimensions (33 -> 70 -> 33, two blocks so that Tied-LoRA shares across layers, and a head for
``modules_to_save``). Every adapter is built with ``init_weights=False`` so it is not an identity and each check can
fail: save/load (safetensors and pickle), copy/pickle of the model, several adapters, merge/unmerge/safe merge and
merging twice, disable/enable, delete_adapter, the dtype x ``autocast_adapter_dtype`` matrix, ``modules_to_save``,
``low_cpu_mem_usage`` loading, inference-mode loading, and mixed-adapter batches.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from open_instruct.tied_lora import TiedLoraConfig
from prolora import MosConfig, ProLoraConfig

torch.set_num_threads(1)
TARGETS = ["up", "down"]

CONFIGS = {
    "prolora_u1_m2_n3": lambda: ProLoraConfig(r=4, lora_alpha=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=3,
                                              target_modules=TARGETS, init_weights=False),
    "prolora_u0_m3_n2_norot": lambda: ProLoraConfig(r=6, unshared_r=0, reduce_lora_A_x=3, reduce_lora_B_x=2,
                                                    enable_lora_rotation=False, target_modules=TARGETS,
                                                    lora_dropout=0.1, init_weights=False),
    "prolora_u_eq_r": lambda: ProLoraConfig(r=3, unshared_r=3, reduce_lora_A_x=5, reduce_lora_B_x=7,
                                            target_modules=TARGETS, init_weights=False),
    "prolora_shifts_unrectified": lambda: ProLoraConfig(r=5, unshared_r=2, reduce_lora_A_x=4, reduce_lora_B_x=4,
                                                        lora_A_shift_size=2, lora_B_shift_size=0,
                                                        rectified_init=False, target_modules=TARGETS,
                                                        init_weights=False),
    "mos_l3_p1": lambda: MosConfig(r=4, lora_alpha=8, mos_r=3, private_r=1, shards_per_vector=3,
                                   target_modules=TARGETS, init_weights=False),
    "mos_paired_same_subset": lambda: MosConfig(r=3, mos_r=2, shards_per_vector=2, pair_dissociation=False,
                                                subset_selection=False, lora_dropout=0.1, target_modules=TARGETS,
                                                init_weights=False),
    "mos_layer_pools": lambda: MosConfig(r=2, mos_r=2, global_pool=False, shards_per_vector=5,
                                         target_modules=TARGETS, init_weights=False),
    "tied_vBuA": lambda: TiedLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_weights=False),
    "tied_frozen_AB": lambda: TiedLoraConfig(r=5, train_A=False, train_B=False, target_modules=TARGETS,
                                             init_weights=False),
    "tied_only_B": lambda: TiedLoraConfig(r=3, train_A=False, train_u=False, train_v=False, target_modules=TARGETS,
                                          lora_dropout=0.1, init_weights=False),
}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(33, 70), nn.Linear(70, 33)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(33, 7)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def base_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


def inputs(rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, 33, generator=torch.Generator().manual_seed(1))


def adapted(name: str, seed: int = 1, **kwargs):
    torch.manual_seed(seed)
    return get_peft_model(base_net(), CONFIGS[name](), **kwargs).eval()


def config_with(name: str, **changes):
    config = CONFIGS[name]()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if model.prefix in n}


pytestmark = pytest.mark.parametrize("name", sorted(CONFIGS))


def test_init_weights_true_is_identity_false_is_not(name):
    x = inputs()
    expected = base_net()(x)
    identity = get_peft_model(base_net(), config_with(name, init_weights=True)).eval()
    torch.testing.assert_close(identity(x), expected)
    assert not torch.allclose(adapted(name)(x), expected, atol=1e-4)


@pytest.mark.parametrize("safe", [True, False])
def test_save_and_load(name, safe, tmp_path):
    model, x = adapted(name), inputs()
    expected = model(x)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("adapter_model.safetensors" if safe else "adapter_model.bin")).is_file()
    loaded = PeftModel.from_pretrained(base_net(), tmp_path).eval()
    torch.testing.assert_close(loaded(x), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode by default
    trainable = PeftModel.from_pretrained(base_net(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()


def test_low_cpu_mem_usage_load(name, tmp_path):
    model, x = adapted(name), inputs()
    expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_net(), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    torch.testing.assert_close(loaded(x), expected)


def test_pickle_and_deepcopy(name):
    model, x = adapted(name), inputs()
    expected = model(x)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), expected)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), expected)
    with torch.no_grad():
        next(p for n, p in clone.named_parameters() if clone.prefix in n).add_(1.0)
    torch.testing.assert_close(model(x), expected)  # the copy shares nothing with the original


def test_multiple_adapters_switch_save_load(name, tmp_path):
    model, x = adapted(name), inputs()
    first = model(x)
    torch.manual_seed(7)
    model.add_adapter("other", CONFIGS[name]())
    model.eval()  # the new adapter's dropout modules start in training mode, as in PEFT
    torch.testing.assert_close(model(x), first)  # adding does not activate
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".other" in n)
    model.set_adapter("other")
    second = model(x)
    assert not torch.allclose(first, second, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_net(), tmp_path).eval()
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    torch.testing.assert_close(loaded(x), first)
    loaded.set_adapter("other")
    torch.testing.assert_close(loaded(x), second)


def test_merge_unmerge_safe_merge_and_merging_twice(name):
    model, x = adapted(name), inputs()
    expected, base_out = model(x), base_net()(x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.merge_adapter()
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="[Aa]lready merged"):
        model.merge_adapter()  # idempotent: a second merge adds nothing
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    merged = copy.deepcopy(model).merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, type(model.base_model).tuner_layer_cls) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.unload()(x), base_out)


def test_safe_merge_refuses_a_broken_adapter(name):
    model = adapted(name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if model.prefix in n and p.ndim == 2:
                p.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        model.merge_adapter(safe_merge=True)


def test_disable_and_enable(name):
    model, x = adapted(name), inputs()
    expected, base_out = model(x), base_net()(x)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), base_out)
    torch.testing.assert_close(model(x), expected)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is unmerged while disabled
        torch.testing.assert_close(model(x), base_out, rtol=1e-5, atol=1e-5)


def test_delete_adapter(name):
    model, x = adapted(name), inputs()
    expected = model(x)
    model.add_adapter("other", CONFIGS[name]())
    model.delete_adapter("other")
    assert "other" not in model.peft_config
    assert not any(".other" in n for n, _ in model.named_parameters())
    assert not any(".other" in k for k in model.state_dict())
    torch.testing.assert_close(model(x), expected)
    model.add_adapter("third", CONFIGS[name]())
    model.set_adapter("third")
    model.delete_adapter("default")
    assert model.active_adapters == ["third"]
    assert not any(".default" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("autocast", [True, False])
def test_dtype_autocast_matrix(name, dtype, autocast):
    base = base_net().to(dtype)
    model = get_peft_model(base, CONFIGS[name](), autocast_adapter_dtype=autocast).eval()
    expected = torch.float32 if autocast and dtype != torch.float32 else dtype
    dtypes = {p.dtype for n, p in model.named_parameters() if model.prefix in n}
    assert dtypes == {expected}
    out = model(inputs().to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert model.get_nb_trainable_parameters() == adapted(name).get_nb_trainable_parameters()


def test_modules_to_save_are_trained_saved_and_loaded(name, tmp_path):
    model = get_peft_model(base_net(), config_with(name, modules_to_save=["head"])).train()
    head_before = base_net().head.weight.detach().clone()
    before = adapter_params(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(inputs()).pow(2).mean().backward()
    optimizer.step()
    after = adapter_params(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in trainable)
    assert all(model.prefix in n or "modules_to_save" in n for n in trainable)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    trained_head = model.base_model.model.head.modules_to_save["default"].weight
    assert not torch.equal(trained_head, head_before)
    torch.testing.assert_close(model.base_model.model.head.original_module.weight, head_before)
    model.eval()
    x = inputs()
    expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_net(), tmp_path).eval()
    torch.testing.assert_close(loaded(x), expected)


def test_mixed_adapter_batch(name):
    model, x = adapted(name), inputs(rows=3)
    torch.manual_seed(7)
    model.add_adapter("other", CONFIGS[name]())
    model.eval()
    first = model(x)
    model.set_adapter("other")
    second = model(x)
    with model.disable_adapter():
        base_out = model(x)
    mixed = model(x, adapter_names=["default", "other", "__base__"])
    torch.testing.assert_close(mixed, torch.stack([first[0], second[1], base_out[2]]))
