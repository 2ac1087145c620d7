"""PRoLoRA's fused dropout (`prolora.dropout`): the Bernoulli(p) process it samples, and that the fused layer path
computes LoRA's ``result + (alpha/r) B A dropout(x)`` with it, values and gradients, at less saved memory."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

import prolora as P
from prolora import dropout as D
from prolora.rebuild import chunk_width, prolora_delta


def test_sampled_positions_are_a_bernoulli_process():
    torch.manual_seed(0)
    numel, p = 400_000, 0.05
    dropped = D.sample_dropped((400, 1000), p, torch.device("cpu"))
    assert dropped.dtype == torch.long and dropped.dim() == 1
    assert int(dropped.min()) >= 0 and int(dropped.max()) < numel
    assert bool((dropped[1:] > dropped[:-1]).all())  # sorted, no repeats
    sigma = math.sqrt(numel * p * (1 - p))
    assert abs(dropped.numel() - numel * p) < 5 * sigma
    # no position is favoured: each tenth of the tensor holds a tenth of the drops
    per_tenth = torch.bincount(dropped // (numel // 10), minlength=10).double()
    assert float((per_tenth - numel * p / 10).abs().max()) < 5 * math.sqrt(numel / 10 * p * (1 - p))
    # independent neighbours: P(drop at i+1 | drop at i) = p
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[dropped] = True
    pairs = int((mask[1:] & mask[:-1]).sum())
    assert abs(pairs / int(mask[:-1].sum()) - p) < 5 * math.sqrt(p * (1 - p) / int(mask[:-1].sum()))


def test_sampling_follows_the_seed_and_handles_empty_tensors():
    torch.manual_seed(3)
    a = D.sample_dropped((7, 9), 0.3, "cpu")
    torch.manual_seed(3)
    assert torch.equal(a, D.sample_dropped((7, 9), 0.3, "cpu"))
    assert D.sample_dropped((0, 5), 0.3, "cpu").numel() == 0
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            D.sample_dropped((3,), p, "cpu")


def test_more_gap_batches_when_the_first_falls_short(monkeypatch):
    """Force the rare second (and further) batch of gaps: still every drop, in range, at the right rate."""
    monkeypatch.setattr(D, "_gap_batch", lambda numel, p: 3)
    torch.manual_seed(1)
    numel, p = 50_000, 0.2
    dropped = D.sample_dropped((numel,), p, "cpu")
    assert bool((dropped[1:] > dropped[:-1]).all()) and int(dropped.max()) < numel
    assert abs(dropped.numel() - numel * p) < 5 * math.sqrt(numel * p * (1 - p))


def test_index_and_mask_forms_zero_the_same_entries():
    x = torch.randn(4, 6)
    index = torch.tensor([0, 5, 13, 23])
    mask = torch.zeros(24, dtype=torch.bool)
    mask[index] = True
    y1, y2 = D.apply_dropped(x, index), D.apply_dropped(x, mask.view(4, 6))
    assert torch.equal(y1, y2) and int((y1 == 0).sum()) == 4
    assert torch.equal(y1.view(-1)[[1, 2]], x.view(-1)[[1, 2]])  # a copy: x itself is untouched
    assert int((x == 0).sum()) == 0


def _chunks(u, d_in=72, d_out=98, r=8, m=5, n=3):
    rs = r - u
    A0 = torch.randn(rs, chunk_width(d_in, m), requires_grad=True) if rs else None
    B0 = torch.randn(chunk_width(d_out, n), rs, requires_grad=True) if rs else None
    A_u = torch.randn(u, d_in, requires_grad=True) if u else None
    B_u = torch.randn(d_out, u, requires_grad=True) if u else None
    return A0, A_u, B0, B_u, (d_in, d_out, m, n, max(rs // m, 1), max(rs // n, 1))


@pytest.mark.parametrize("u,p,autocast", [(1, 0.3, False), (0, 0.05, False), (8, 0.5, False), (2, 0.3, True)])
def test_fused_dropout_and_add_match_plain_autograd(u, p, autocast):
    """``prolora_delta(..., result, p)`` = ``result + scale * B A (x * keep / (1 - p))`` with the same draws."""
    torch.manual_seed(0)
    A0, A_u, B0, B_u, geometry = _chunks(u)
    d_in, d_out, m, n, s_A, s_B = geometry
    x = torch.randn(2, 5, d_in, requires_grad=True)
    result = torch.randn(2, 5, d_out, requires_grad=True)
    leaves = [t for t in (x, result, A0, A_u, B0, B_u) if t is not None]

    def run(fused):
        torch.manual_seed(11)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                y = prolora_delta(x, A0, A_u, B0, B_u, geometry, 0.5, result, p)
            else:
                keep = torch.ones(x.numel())
                keep[D.sample_dropped(x.shape, p, x.device)] = 0
                xd = x * keep.view_as(x) / (1 - p)
                A, B = P.rebuild_A(A0, A_u, d_in, m, s_A), P.rebuild_B(B0, B_u, d_out, n, s_B)
                y = result + torch.nn.functional.linear(torch.nn.functional.linear(xd, A) * 0.5, B)
        return y, torch.autograd.grad(y.float().square().sum(), leaves)

    (y1, g1), (y2, g2) = run(True), run(False)
    assert y1.dtype == y2.dtype
    for a, b in zip((y1, *g1), (y2, *g2)):
        assert a.dtype == b.dtype
        if autocast:  # bf16 rounding: elementwise checks mean little, the relative error of the whole does
            a, b = a.detach().float(), b.detach().float()
            assert float((a - b).norm() / b.norm()) < 2e-2
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # values ~10: fp32 rounding


def test_fused_add_promotes_mixed_dtypes_like_a_plain_sum():
    """A bf16 base output and fp32 adapter without autocast: the sum promotes to fp32, as ``result + delta``."""
    torch.manual_seed(0)
    A0, A_u, B0, B_u, geometry = _chunks(1)
    x = torch.randn(3, geometry[0])
    result = torch.randn(3, geometry[1]).bfloat16().requires_grad_()
    y = prolora_delta(x, A0, A_u, B0, B_u, geometry, 0.5, result)
    expected = result + prolora_delta(x, A0, A_u, B0, B_u, geometry, 0.5)
    assert y.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(y, expected)
    (grad,) = torch.autograd.grad(y.sum(), [result])
    assert grad.dtype == torch.bfloat16


def _saved_bytes(model, x) -> int:
    """Bytes of distinct tensor storages autograd keeps from one forward (what backward will need)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


def test_training_with_dropout_keeps_less_than_lora():
    """Three adapted projections reading one input: LoRA keeps a float mask and a dropped copy of the input per
    projection; the fused path keeps the input once and the dropped positions."""
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(256, 256) for _ in range(3))

        def forward(self, x):
            return self.q(x) + self.k(x) + self.v(x)

    x = torch.randn(8, 64, 256, requires_grad=True)
    common = dict(r=8, lora_dropout=0.1, target_modules=["q", "k", "v"])
    saved = {}
    for name, config in (("lora", LoraConfig(**common)), ("prolora", P.ProLoraConfig(**common, unshared_r=1,
                                                                                      reduce_lora_A_x=2))):
        torch.manual_seed(0)
        model = get_peft_model(Attention(), config)
        model.train()
        saved[name] = _saved_bytes(model, x)
    assert saved["prolora"] < 0.5 * saved["lora"], saved


def test_zero3_path_draws_the_fused_dropout(monkeypatch):
    """Under ZeRO-3 (parameters carry ``ds_id``) the layer takes plain autograd; its dropout is the fused path's
    draw (no ``nn.Dropout`` call), so for one seed both paths give the same output and gradients."""
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(32, 48)

        def forward(self, x):
            return self.q(x)

    torch.manual_seed(0)
    config = P.ProLoraConfig(r=4, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2, lora_dropout=0.3,
                             target_modules=["q"])
    model = get_peft_model(Block(), config)
    model.train()
    x = torch.randn(3, 5, 32)
    layer = model.base_model.model.q
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for param in trainable:  # B starts at zero: make every factor matter
            param.normal_()

    def run():
        torch.manual_seed(7)
        y = model(x)
        return y.detach(), torch.autograd.grad(y.square().sum(), trainable)

    fused_y, fused_grads = run()
    for param in trainable:
        param.ds_id = 0  # what DeepSpeed ZeRO-3 puts on a partitioned parameter
    rebuilds = []
    original_rebuild = type(layer).rebuild
    monkeypatch.setattr(type(layer), "rebuild",
                        lambda self, name: rebuilds.append(name) or original_rebuild(self, name))

    def no_nn_dropout(self, h):
        raise AssertionError("the ZeRO-3 path called nn.Dropout")
    monkeypatch.setattr(torch.nn.Dropout, "forward", no_nn_dropout)
    zero3_y, zero3_grads = run()
    assert rebuilds == ["default"]  # the ZeRO-3 branch ran
    torch.testing.assert_close(zero3_y, fused_y, rtol=1e-5, atol=1e-5)
    for a, b in zip(zero3_grads, fused_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(zero3_y, model(x))  # dropout did change the training output
