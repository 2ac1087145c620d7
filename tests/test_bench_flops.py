"""The model-FLOP count of `benchmarks/bench_finetune.py` against torch's own count of the matmuls that ran.

`torch.utils.flop_counter.FlopCounterMode` counts every matrix multiply dispatched in a real forward + backward of a
tiny random Llama with a PEFT adapter (eager attention, so attention's two matmuls are plain, counted bmm calls).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers.models import make_tiny_llama
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

import prolora

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_finetune", REPO / "benchmarks" / "bench_finetune.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.import_heavy()  # the script imports torch & co. only once its command line parsed

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def counted_flops(model, input_ids, attention_mask, **forward_kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).logits.float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("method, targets", [
    ("lora", ALL),
    ("lora", ["q_proj", "v_proj"]),  # the first layer's k and attention backward lose part of their gradients
    ("lora", ["down_proj"]),  # only the last projection: nothing before the first layer's MLP output needs one
    ("prolora", ALL),
])
def test_training_step_flops_matches_torchs_count(method, targets):
    model = make_tiny_llama(hidden_size=48, intermediate_size=80, num_layers=3, vocab_size=96,
                            attn_implementation="eager")
    r = 4
    common = dict(r=r, lora_alpha=8, lora_dropout=0.1, target_modules=targets)
    config = (LoraConfig(**common, init_lora_weights=False) if method == "lora" else
              prolora.ProLoraConfig(**common, init_weights=False, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2))
    model = get_peft_model(model, config)
    model.train()
    batch, seq = 3, 11
    ids = torch.randint(0, 96, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # padding: computed all the same, so counted as processed
    expected = bench.training_step_flops(model.config.to_dict(), targets, r, [(batch, seq)])
    assert counted_flops(model, ids, mask) == expected


def test_lm_head_positions_and_several_forwards_add_up():
    model = get_peft_model(make_tiny_llama(num_layers=2, attn_implementation="eager"),
                           LoraConfig(r=2, target_modules=ALL, init_lora_weights=False))
    model.train()
    config = model.config.to_dict()
    keep = torch.zeros(2, 9, dtype=torch.bool)
    keep[:, 4:8] = True  # the LM head only where a label follows, as finetune's loss does
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        for _ in range(2):
            model(input_ids=ids, logits_to_keep=keep).logits.sum().backward()
        model(input_ids=ids[:1, :5]).logits.sum().backward()
    counted = counter.get_total_flops()
    assert counted == bench.training_step_flops(config, ALL, 2, [(2, 9), (2, 9), (1, 5)],
                                                lm_head_positions=2 * 8 + 5)
    # against the often-quoted 6·N·T, with the frozen base it is about two thirds of it (here, tiny model: less)
    assert bench.training_step_flops(config, ALL, 2, [(2, 9)]) < 6 * sum(p.numel() for p in model.parameters()) * 18


def test_forward_shapes_sees_the_model_inside_a_call_it_does_not_own():
    model = make_tiny_llama(attn_implementation="eager")
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[1, 2:] = True
    with bench.ForwardShapes(vocab_size=128) as shapes:
        model(input_ids=torch.zeros(2, 6, dtype=torch.long), logits_to_keep=keep)
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    model(input_ids=torch.zeros(4, 4, dtype=torch.long))  # after the hook was removed: not recorded
    assert shapes.batch_shapes == [(2, 6), (1, 3)]
    assert shapes.lm_head_positions == 4 + 3


def test_matmul_ceiling_is_a_plausible_rate():
    config = {"hidden_size": 64, "intermediate_size": 128}
    rate = bench.matmul_flops_per_s(32, config, torch.float32, "cpu", repeats=3)
    assert 1e6 < rate < 1e15  # FLOP/s: more than a megaflop, less than any machine this runs on


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="qkv_proj"):
        bench.training_step_flops(make_tiny_llama().config.to_dict(), ["qkv_proj"], 2, [(1, 4)])
