"""Forward+backward time and peak memory of PRoLoRA and MoS vs PEFT LoRA on a Llama-like layer set, in one run.

The layer set is the seven projections of one decoder layer (q, k, v, o, gate, up, down) with frozen base weights;
the input of each projection is a random activation of ``tokens`` rows. Both adapters use the same rank r; PRoLoRA
uses u unshared ranks and m = n chunk copies (default r=8, u=1, m=n=2); MoS uses l shards per rank vector with
subset selection and pair dissociation (default l=4; one layer, so its pool has R = r). Timings are interleaved
(LoRA, PRoLoRA, MoS, LoRA, ...) and the medians are compared, so machine noise hits all alike. Peak memory
of one step is measured per method (CUDA: ``max_memory_allocated``; CPU: the peak of the torch profiler's memory
timeline, which replays every allocation and free).

    python benchmarks/bench_prolora_layer.py                # SmolLM2-135M dims and Llama-2-7B dims
    python benchmarks/bench_prolora_layer.py --device cuda --dtype bfloat16

Target: time ratio (PRoLoRA or MoS) / LoRA <= 1.05 and peak-memory ratio <= 1.00.

torch, PEFT and prolora are imported by the functions that use them, not by the module: a mistyped flag fails at
once instead of after their ~10 s import.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from typing import TYPE_CHECKING

from open_instruct.peft_methods import LLAMA_PROJECTIONS

if TYPE_CHECKING:
    import torch

SHAPES = {  # name: (hidden, intermediate, kv_dim, tokens)
    "smollm2-135m": (576, 1536, 192, 4096),
    "llama2-7b": (4096, 11008, 4096, 512),
}
PROJ = list(LLAMA_PROJECTIONS)


def layer_set(hidden: int, intermediate: int, kv_dim: int) -> torch.nn.Module:
    """The seven Llama projections of one decoder layer, each applied to its own input (its ``dims``: name → (d_in,
    d_out)). The class is defined in here because subclassing ``nn.Module`` at module level would import torch."""
    from torch import nn

    class LayerSet(nn.Module):
        def __init__(self):
            super().__init__()
            dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_dim), "v_proj": (hidden, kv_dim),
                    "o_proj": (hidden, hidden), "gate_proj": (hidden, intermediate),
                    "up_proj": (hidden, intermediate), "down_proj": (intermediate, hidden)}
            for name, (d_in, d_out) in dims.items():
                self.add_module(name, nn.Linear(d_in, d_out, bias=False))
            self.dims = dims

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(getattr(self, name)(x).float().square().mean() for name, x in inputs.items())

    return LayerSet()


METHODS = ("lora", "prolora", "mos")
LABELS = {"lora": "LoRA", "prolora": "PRoLoRA", "mos": "MoS"}


def build(method: str, shape: str, r: int, u: int, m: int, device: str, dtype: torch.dtype, seed: int = 0,
          shards: int = 4):
    import torch
    from peft import LoraConfig, get_peft_model

    import prolora as P

    hidden, intermediate, kv_dim, tokens = SHAPES[shape]
    torch.manual_seed(seed)
    base = layer_set(hidden, intermediate, kv_dim).to(device=device, dtype=dtype)
    if method == "lora":
        config = LoraConfig(r=r, lora_alpha=16, target_modules=PROJ)
    elif method == "mos":
        config = P.MosConfig(r=r, mos_r=r, shards_per_vector=shards, lora_alpha=16, target_modules=PROJ)
    else:
        config = P.ProLoraConfig(r=r, lora_alpha=16, unshared_r=u, reduce_lora_A_x=m, reduce_lora_B_x=m,
                                 target_modules=PROJ)
    model = get_peft_model(base, config)
    with torch.no_grad():  # non-zero B so the whole adapter path is exercised
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or "prolora_B" in name or "mos_pool_B" in name):
                p.normal_(0, 0.01)
    inputs = {name: torch.randn(tokens, d_in, device=device, dtype=dtype) for name, (d_in, _) in base.dims.items()}
    return model, inputs


def step(model, inputs) -> None:
    loss = model(inputs)
    loss.backward()
    for p in model.parameters():
        p.grad = None


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(shape, args, dtype) -> dict[str, list[float]]:
    models = {method: build(method, shape, args.r, args.u, args.m, args.device, dtype, shards=args.l)
              for method in METHODS}
    for model, inputs in models.values():  # warm-up
        for _ in range(args.warmup):
            step(model, inputs)
    times = {method: [] for method in METHODS}
    for _ in range(args.repeats):
        for method, (model, inputs) in models.items():
            sync(args.device)
            start = time.perf_counter()
            step(model, inputs)
            sync(args.device)
            times[method].append(time.perf_counter() - start)
    return times


def peak_memory(method: str, shape: str, args, dtype) -> int:
    """Peak bytes allocated during one fwd+bwd step (model, inputs, activations, gradients)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model, inputs = build(method, shape, args.r, args.u, args.m, args.device, dtype, shards=args.l)
    step(model, inputs)  # warm-up: one-time allocations (index caches, thread pools) are not counted
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(model, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    # CPU has no allocator statistics; the profiler's memory timeline replays every allocation and free.
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step(model, inputs)
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        with open(f"{tmp}/timeline.json") as f:
            _, sizes = json.load(f)
    return max(sum(per_category) for per_category in sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--u", type=int, default=1)
    parser.add_argument("--m", type=int, default=2, help="m = n chunk copies")
    parser.add_argument("--l", type=int, default=4, help="MoS shards per rank vector")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)

    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} r={args.r} u={args.u} "
          f"m=n={args.m} l={args.l} repeats={args.repeats}")
    print(f"{'shape':<14}{'tokens':>7}{'method':>9}{'ms':>10}{'time ratio':>12}{'MiB':>10}{'mem ratio':>11}")
    results = {}
    for shape in args.shapes:
        times = time_pair(shape, args, dtype)
        medians = {method: statistics.median(t) for method, t in times.items()}
        memory = {method: peak_memory(method, shape, args, dtype) for method in METHODS}
        results[shape] = {}
        for method in METHODS:
            row = {"ms": medians[method] * 1e3, "time_ratio": medians[method] / medians["lora"],
                   "peak_bytes": memory[method],
                   "mem_ratio": memory[method] / memory["lora"] if memory["lora"] else float("nan")}
            results[shape][method] = row
            print(f"{shape:<14}{SHAPES[shape][3]:>7}{LABELS[method]:>9}{row['ms']:>10.2f}{row['time_ratio']:>12.3f}"
                  f"{memory[method] / 2**20:>10.1f}{row['mem_ratio']:>11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
