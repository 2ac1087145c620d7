"""Serving many adapters on SmolLM2-135M: PRoLoRA and MoS vs LoRA of the same rank, measured in the same run.

For N adapters (default 1, 4, 16) on all seven projections, a batch of ``--batch`` prompts is generated greedily
as one PEFT mixed-adapter batch (``generate(..., adapter_names=...)``, row i uses adapter i mod N):

* HF tokens/s, PRoLoRA (compact chunks, A/B rebuilt per forward) and MoS (shard pools, A/B assembled once per
  call) vs LoRA, interleaved, medians and their ratios;
* resident bytes per adapter (the adapter's tensors in the live model), and the shared gather-index cache;
* bytes on disk per adapter: the compact PRoLoRA / MoS files vs PRoLoRA's vanilla-LoRA export vs a LoRA adapter;
* time to load the N saved adapters into one model (``from_pretrained`` + ``load_adapter``);
* vLLM tokens/s with the exported adapters in one batch, when ``vllm`` imports in this interpreter
  (``.venv-vllm/bin/python benchmarks/bench_serving.py``; ``bash scripts/setup_vllm.sh`` creates it).

    python benchmarks/bench_serving.py                              # full settings
    python benchmarks/bench_serving.py --repeats 3 --new_tokens 8   # short
    .venv-vllm/bin/python benchmarks/bench_serving.py --skip_hf     # vLLM only

Targets: HF PRoLoRA / MoS tokens/s >= 0.95x LoRA's; resident bytes per adapter = its compact parameter bytes
(PRoLoRA: 0.56x LoRA's at r=8, u=1, m=n=2; MoS: the pools, R/r of LoRA's, plus 2*r*l int64 indices per layer).

The functions import torch, PEFT and transformers themselves, not the module: a mistyped flag fails at once instead
of after their ~10 s import.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


METHODS = ("lora", "prolora", "mos")


def smollm2() -> str:
    from open_instruct.offline_assets import smollm2_path

    return str(smollm2_path())


def adapter_config(method: str, args):
    from peft import LoraConfig

    import prolora

    if method == "lora":
        return LoraConfig(r=args.rank, lora_alpha=16, target_modules=PROJ)
    if method == "mos":
        return prolora.MosConfig(r=args.rank, lora_alpha=16, target_modules=PROJ, mos_r=args.mos_r,
                                 private_r=args.mos_private_r, shards_per_vector=args.mos_shards_per_vector)
    return prolora.ProLoraConfig(r=args.rank, lora_alpha=16, target_modules=PROJ, unshared_r=args.unshared_r,
                                 reduce_lora_A_x=args.copies, reduce_lora_B_x=args.copies)


def save_adapters(method: str, base_path: str, n: int, root: Path, args) -> list[Path]:
    """``n`` adapters with random non-zero weights (B included, so every adapter changes the output)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                           adapter_config(method, args))
    paths = []
    for i in range(n):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        model.save_pretrained(root / f"{method}_{i}")
        paths.append(root / f"{method}_{i}")
    return paths


def load(base_path: str, paths: list[Path]):
    """One model holding every adapter; returns (model, seconds spent loading the adapters)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    start = time.perf_counter()
    model = PeftModel.from_pretrained(base, str(paths[0]), adapter_name="a0")
    for i, path in enumerate(paths[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    return model.eval(), time.perf_counter() - start


def adapter_bytes(model, adapter: str) -> int:
    """Bytes of every parameter/buffer that belongs to ``adapter`` in the live model."""
    tensors = {id(t): t for name, t in [*model.named_parameters(), *model.named_buffers()]
               if f".{adapter}." in f"{name}." or name.endswith(f".{adapter}")}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def generate_seconds(model, batch, names, new_tokens: int) -> float:
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**batch, adapter_names=names, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def prompts(tokenizer, batch: int, length: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, tokenizer.vocab_size - 100, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bench_vllm(base_path: str, exported: list[Path], counts: list[int], batch: int, length: int, new_tokens: int,
               repeats: int, rank: int) -> dict:
    """vLLM tokens/s for the same batch with N of the exported adapters (row i: adapter i mod N), and the base model
    alone, from one engine that holds them all (``max_loras`` = the largest N)."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from open_instruct.serve import vllm_max_lora_rank

    llm = LLM(model=base_path, dtype="float32", enforce_eager=not torch.cuda.is_available(), enable_lora=True,
              max_loras=max(counts), max_lora_rank=vllm_max_lora_rank(rank), max_model_len=length + new_tokens + 8)
    generator = torch.Generator().manual_seed(0)
    inputs = [TokensPrompt(prompt_token_ids=row)
              for row in torch.randint(100, 40000, (batch, length), generator=generator).tolist()]
    requests = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(exported)]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    batches = {"base": None, **{n: [requests[i % n] for i in range(batch)] for n in counts}}
    llm.generate(inputs, params, lora_request=batches[max(counts)], use_tqdm=False)  # warm-up: loads the adapters
    timings: dict = {kind: [] for kind in batches}
    for _ in range(repeats):
        for kind, lora in batches.items():
            start = time.perf_counter()
            llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
            timings[kind].append(time.perf_counter() - start)
    tps = {kind: batch * new_tokens / statistics.median(t) for kind, t in timings.items()}
    for n in counts:
        print(f"vLLM N={n:>2}  tok/s {tps[n]:.1f}  (base model alone {tps['base']:.1f}, "
              f"ratio {tps[n] / tps['base']:.3f})", flush=True)
    return tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16], help="adapter counts N")
    parser.add_argument("--batch", type=int, default=16, help="rows per mixed batch")
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats per method")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--unshared_r", type=int, default=1)
    parser.add_argument("--copies", type=int, default=2, help="m = n")
    parser.add_argument("--mos_r", type=int, default=2, help="MoS: the pools' equivalent rank R")
    parser.add_argument("--mos_private_r", type=int, default=1, help="MoS: private ranks p")
    parser.add_argument("--mos_shards_per_vector", type=int, default=4, help="MoS: shards per rank vector l")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip_hf", action="store_true",
                        help="only the disk sizes and vLLM (e.g. a second run in .venv-vllm after the HF one)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    import prolora
    from prolora.rebuild import _INDEX_CACHE

    base_path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    batch = prompts(tokenizer, args.batch, args.prompt_len)
    results: dict = {"settings": vars(args), "by_adapters": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_max = max(args.adapters)
        saved = {method: save_adapters(method, base_path, n_max, root, args) for method in METHODS}
        exported = []
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        for i, path in enumerate(saved["prolora"]):
            model = PeftModel.from_pretrained(base, str(path))
            exported.append(prolora.export_as_lora(model, root / f"exported_{i}"))
            base = model.unload()
        disk = {kind: (paths[0] / "adapter_model.safetensors").stat().st_size
                for kind, paths in (("prolora", saved["prolora"]), ("mos", saved["mos"]),
                                    ("prolora_exported", exported), ("lora", saved["lora"]))}
        results["disk_bytes_per_adapter"] = disk

        for n in [] if args.skip_hf else args.adapters:
            names = [f"a{i % n}" for i in range(args.batch)]
            models, load_s = {}, {}
            for method in METHODS:
                models[method], load_s[method] = load(base_path, saved[method][:n])
            resident = {m: statistics.median(adapter_bytes(models[m], f"a{i}") for i in range(n)) for m in models}
            before = {m: model_bytes(models[m]) for m in models}
            cache_before = sum(t.numel() * t.element_size() for t in _INDEX_CACHE.values())
            for method in models:  # warm-up (and the gather-index cache for PRoLoRA)
                generate_seconds(models[method], batch, names, 2)
            timings = {m: [] for m in models}
            for _ in range(args.repeats):
                for method in models:
                    timings[method].append(generate_seconds(models[method], batch, names, args.new_tokens))
            tokens = args.batch * args.new_tokens
            tps = {m: tokens / statistics.median(t) for m, t in timings.items()}
            row = {
                "hf_tokens_per_s": tps, "hf_ratio_prolora_over_lora": tps["prolora"] / tps["lora"],
                "hf_ratio_mos_over_lora": tps["mos"] / tps["lora"],
                "resident_ratio_mos_over_lora": resident["mos"] / resident["lora"],
                "resident_bytes_per_adapter": resident,
                "resident_ratio_prolora_over_lora": resident["prolora"] / resident["lora"],
                "model_bytes_unchanged_by_serving": all(model_bytes(models[m]) == before[m] for m in models),
                "index_cache_bytes": sum(t.numel() * t.element_size() for t in _INDEX_CACHE.values()),
                "index_cache_growth_bytes": sum(t.numel() * t.element_size() for t in _INDEX_CACHE.values())
                - cache_before,
                "load_seconds": load_s,
            }
            results["by_adapters"][n] = row
            print(f"N={n:>2}  HF tok/s LoRA {tps['lora']:.1f}  PRoLoRA {tps['prolora']:.1f}  "
                  f"ratio {row['hf_ratio_prolora_over_lora']:.3f}  resident B/adapter LoRA {resident['lora']:,.0f}  "
                  f"PRoLoRA {resident['prolora']:,.0f} ({row['resident_ratio_prolora_over_lora']:.3f})  "
                  f"load s LoRA {load_s['lora']:.2f} PRoLoRA {load_s['prolora']:.2f}", flush=True)
            print(f"      MoS HF tok/s {tps['mos']:.1f}  ratio {row['hf_ratio_mos_over_lora']:.3f}  resident B/adapter "
                  f"{resident['mos']:,.0f} ({row['resident_ratio_mos_over_lora']:.3f})  load s {load_s['mos']:.2f}",
                  flush=True)
            del models

        try:
            import vllm  # noqa: F401
        except ImportError:
            results["vllm"] = "not importable here (run with .venv-vllm/bin/python; bash scripts/setup_vllm.sh)"
        else:
            results["vllm_tokens_per_s"] = bench_vllm(base_path, exported, args.adapters, args.batch,
                                                      args.prompt_len, args.new_tokens, args.repeats, args.rank)
    print(f"disk bytes/adapter: PRoLoRA {disk['prolora']:,}  MoS {disk['mos']:,}  "
          f"exported {disk['prolora_exported']:,}  "
          f"LoRA {disk['lora']:,}")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
