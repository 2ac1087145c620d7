"""Trainable-parameter counts of LoRA, PRoLoRA, MoS, VeRA and Tied-LoRA for a Llama-style model, without building it.

Each method's count is a sum over the adapted projections of a decoder with L layers; the formulas are the
methods' ``count_params`` in the registry (`open_instruct.peft_methods`):

* LoRA      ``L * sum r (d_in + d_out)``
* PRoLoRA   ``L * sum (r-u) ceil(d_in/m) + (r-u) ceil(d_out/n) + u (d_in + d_out)``  (`prolora.params`)
* MoS       ``sum over projection types of R * L * l * (ceil(d_in/l) + ceil(d_out/l))`` (`prolora.mos`): the shard
            pools, whatever the per-layer rank r; ``= L * sum R (d_in + d_out)`` (LoRA at rank R) when l divides
* VeRA      ``L * sum (d_out + r)``: PEFT's trainable lambda_b (d_out) and lambda_d (r); its random A/B are frozen
* Tied-LoRA ``sum over projection types of r (d_in + d_out)`` (one shared A, B each) ``+ L * sum (r + d_out)``
            (per-layer u, v), all four factors trained (the paper's vBuA)

The shapes come from a `ModelDims` (hidden size, MLP size, heads, KV heads, head dim, layers): a built-in table
for Llama-2-7B/13B and SmolLM2-135M, or any HF ``config.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from open_instruct.peft_methods import LLAMA_PROJECTIONS, mos_setting, prolora_setting
from open_instruct.peft_methods import METHODS as _REGISTRY

METHODS = tuple(_REGISTRY)


@dataclass(frozen=True)
class ModelDims:
    """The shapes that decide adapter sizes in a Llama-style decoder."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict, name: str = "model") -> "ModelDims":
        """From a HF config dict (`config.json` / `PretrainedConfig.to_dict()`)."""
        try:
            hidden, heads = config["hidden_size"], config["num_attention_heads"]
            return cls(
                name=name,
                hidden_size=hidden,
                intermediate_size=config["intermediate_size"],
                num_layers=config["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=config.get("num_key_value_heads") or heads,
                head_dim=config.get("head_dim") or hidden // heads,
            )
        except KeyError as missing:
            raise ValueError(f"model config {name!r} lacks {missing} (not a Llama-style decoder config?)") from None

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """``{projection: (d_in, d_out)}`` of the seven linear projections of one decoder layer."""
        h, inner = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, inner), "up_proj": (h, inner), "down_proj": (inner, h)}


BUILTIN_MODELS = {
    "llama2-7b": ModelDims("Llama-2-7B", 4096, 11008, 32, 32, 32, 128),
    "llama2-13b": ModelDims("Llama-2-13B", 5120, 13824, 40, 40, 40, 128),
    "smollm2-135m": ModelDims("SmolLM2-135M", 576, 1536, 30, 9, 3, 64),
}


def resolve_model_dims(spec: str) -> ModelDims:
    """A built-in name, ``offline:smollm2`` (the packaged checkpoint), a config.json or a model folder."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]
    path = spec
    if spec == "offline:smollm2":
        from open_instruct.offline_assets import smollm2_path

        path = str(smollm2_path())
    config_file = Path(path) / "config.json" if os.path.isdir(path) else Path(path)
    if not config_file.is_file():
        raise ValueError(f"unknown model {spec!r}: not one of {sorted(BUILTIN_MODELS)} "
                         f"and no config.json at {config_file}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    return ModelDims.from_config(config, name=spec)


@dataclass(frozen=True)
class MethodSpec:
    """One adapter setting: method, rank and (PRoLoRA only) unshared ranks u and sharing multiples m, n, (MoS only)
    the pool's equivalent rank R (None = r), private ranks p and shards per vector l."""

    method: str
    r: int
    unshared_r: int = 0
    m: int = 1
    n: int = 1
    mos_r: Optional[int] = None
    private_r: int = 0
    shards: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.r < 1 or not 0 <= self.unshared_r <= self.r or self.m < 1 or self.n < 1:
            raise ValueError(f"invalid hyper-parameters for {self.method}: "
                             f"r={self.r} u={self.unshared_r} m={self.m} n={self.n}")
        R = self.r if self.mos_r is None else self.mos_r
        if self.method == "mos" and not (R >= 1 and self.shards >= 1 and 0 <= self.private_r <= min(self.r, R)
                                         and (self.private_r < R or self.r == R)):
            raise ValueError(f"invalid hyper-parameters for mos: r={self.r} R={R} p={self.private_r} "
                             f"l={self.shards} (need R, l >= 1, 0 <= p <= min(r, R), and r = R if p = R)")

    @property
    def label(self) -> str:
        label = _REGISTRY[self.method].label
        if self.method == "prolora":
            return f"{label} (u={self.unshared_r}, m={self.m}, n={self.n})"
        if self.method == "mos":
            return f"{label} (R={self.r if self.mos_r is None else self.mos_r}, p={self.private_r}, l={self.shards})"
        return label


def count_params(dims: ModelDims, spec: MethodSpec, modules=LLAMA_PROJECTIONS) -> int:
    """Trainable parameters of `spec` on every decoder layer's `modules` of the model `dims`."""
    shapes = dims.projection_shapes()
    unknown = [name for name in modules if name not in shapes]
    if unknown:
        raise ValueError(f"unknown projection(s) {unknown}; expected some of {LLAMA_PROJECTIONS}")
    adapted = {p: shapes[p] for p in modules}
    for name, (d_in, d_out) in adapted.items():  # PRoLoRA cannot split a dimension into more chunks than it has
        if spec.m > d_in or spec.n > d_out:
            which, value, size = ("m", spec.m, f"input size {d_in}") if spec.m > d_in else \
                ("n", spec.n, f"output size {d_out}")
            raise ValueError(f"{spec.method}: {which}={value} is larger than {name}'s {size} in {dims.name}")
    if spec.method == "mos":
        for name, (d_in, d_out) in adapted.items():
            if spec.shards > min(d_in, d_out):
                raise ValueError(f"mos: l={spec.shards} is larger than {name}'s size {min(d_in, d_out)} in {dims.name}")
        return _REGISTRY["mos"].count_params(adapted, dims.num_layers, spec.r, mos_r=spec.mos_r,
                                             shards_per_vector=spec.shards)
    return _REGISTRY[spec.method].count_params(adapted, dims.num_layers, spec.r, spec.unshared_r, spec.m, spec.n)


def parse_method_spec(text: str, r: int) -> MethodSpec:
    """``"lora"``, ``"vera"``, ``"tied_lora"`` or ``"prolora:u=1:m=2:n=2"`` (missing keys: u=0, m=n=1) at rank r.

    The keys may also be spelled as the config fields (``unshared_r``, ``reduce_lora_A_x``, ``reduce_lora_B_x``).
    MoS: ``"mos:R=2:p=1:l=4"`` (or ``mos_r``, ``private_r``, ``shards_per_vector``; missing: R=r, p=0, l=1).
    """
    name, *options = text.split(":")
    if name == "mos":
        mos = {"R": None, "p": 0, "l": 1}
        for option in options:
            key, sep, value = option.partition("=")
            setting = mos_setting(key)
            key = setting.aliases[0] if setting and setting.aliases else key
            if not sep or key not in mos or not value.isdigit():
                raise ValueError(f"bad method option {option!r} in {text!r}; expected R=<int>, p=<int> or l=<int>")
            mos[key] = int(value)
        return MethodSpec("mos", r, mos_r=mos["R"], private_r=mos["p"], shards=mos["l"])
    values = {"u": 0, "m": 1, "n": 1}
    for option in options:
        key, sep, value = option.partition("=")
        setting = prolora_setting(key)
        key = setting.aliases[0] if setting and setting.aliases else key
        if not sep or key not in values or not value.isdigit():
            raise ValueError(f"bad method option {option!r} in {text!r}; expected u=<int>, m=<int> or n=<int>")
        values[key] = int(value)
    if name != "prolora" and options:
        raise ValueError(f"only prolora and mos take options, got {text!r}")
    return MethodSpec(name, r, values["u"], values["m"], values["n"])


def params_table(models: list[ModelDims], methods: list[str], ranks: list[int],
                 modules=LLAMA_PROJECTIONS) -> list[dict]:
    """One row per (model, method, r) with the count and its ratio to LoRA at the same rank."""
    rows = []
    for dims in models:
        for r in ranks:
            lora = count_params(dims, MethodSpec("lora", r), modules)
            for text in methods:
                spec = parse_method_spec(text, r)
                params = count_params(dims, spec, modules)
                rows.append({"model": dims.name, "method": spec.label, "r": r, "u": spec.unshared_r, "m": spec.m,
                             "n": spec.n, "params": params, "ratio_to_lora": params / lora})
    return rows


def rows_to_markdown(rows: list[dict]) -> str:
    header = "| model | method | r | trainable params | % of LoRA (same r) |\n|---|---|---:|---:|---:|\n"
    body = "".join(f"| {row['model']} | {row['method']} | {row['r']} | {row['params']:,} | "
                   f"{100 * row['ratio_to_lora']:.2f} |\n" for row in rows)
    return header + body


def plot_params_vs_rank(rows: list[dict], path) -> None:
    """PNG: trainable parameters (log scale) against rank, one line per (model, method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from open_instruct.io_utils import atomic_open

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for row in rows:
        series.setdefault((row["model"], row["method"]), []).append((row["r"], row["params"]))
    for (model, method), points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{method} — {model}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
