"""Tied-LoRA layer: a linear layer whose low-rank pair is shared with every other layer of the same projection.

Math (Renduchintala et al., 2023, "Tied-LoRA", arXiv 2311.09578, the "vBuA" form). For a frozen linear layer
``W0 : R^{d_in} -> R^{d_out}`` at depth l:

    y = W0 x + s * diag(v_l) B diag(u_l) A x,        s = lora_alpha / r

    A   (r, d_in)    shared by all layers with this projection type and shape   (tuner.tied_lora_A)
    B   (d_out, r)   shared likewise                                             (tuner.tied_lora_B)
    u_l (r,)         per layer, scales the rank space between A and B           (layer.tied_lora_u)
    v_l (d_out,)     per layer, scales the output after B                       (layer.tied_lora_v)

The paper names its configurations by the product they compute, read left to right (v B u A), and by which of
the four factors are trained (here the ``train_*`` switches); its recommended configuration trains all four.
So v is the output-side vector (d_out) and u the rank-space one (r); the per-layer parameter count
L * (r + d_out) is the same either way round. The merged update is
``dW_l = s * (v_l[:, None] * B) @ (u_l[:, None] * A)``, still rank <= r, so merging costs nothing at inference.

Storage: the shared A and B live once on the tuner (`TiedLoraModel`) in ``ModuleDict[adapter] ->
ParameterDict[group]``; each layer's ``tied_lora_A[adapter]`` / ``tied_lora_B[adapter]`` entry is *the same*
``nn.Parameter`` object (a reference, not a copy), so gradients from every layer accumulate in one tensor and
the optimizer sees it once. The tuner strips these references when saving (see `model.py`).

Initialisation keeps dW = 0 at step 0: A is Kaiming-uniform with fan_in = d_in (LoRA's A), a frozen B is
Kaiming-uniform with fan_in = r, vectors are ones, and the first trainable factor of (B, v, u, A) is zeroed.
``init_weights=False`` (for tests and debugging, as PEFT's methods) zeroes nothing: A and B are both
Kaiming-uniform and u, v are drawn from U(0.5, 1.5), so the adapter is not an identity.

Dtype, as PEFT's contract: adapter weights are created in the base layer's dtype (float32 for a quantized base);
``get_peft_model(..., autocast_adapter_dtype=True)`` (PEFT's default) then upcasts float16/bfloat16 ones to float32
— for the shared pair once, on the tuner, so the layers stay tied. The input is cast to the adapter's dtype and
the output back. The base layer may be a bitsandbytes 4/8-bit linear (QLoRA); merging then dequantizes, adds dW
and re-quantizes.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from torch import nn

from open_instruct.tied_lora.config import TiedLoraConfig
from prolora.mixed_batch import check_forward_args, sub_batches
from prolora.peft_compat import get_in_out_features, is_supported_linear


def _init_vector(config: TiedLoraConfig, name: str, size: int, device, dtype) -> torch.Tensor:
    """u or v: zeros if it is the factor that makes dW = 0, ones otherwise; U(0.5, 1.5) with init_weights=False."""
    if not config.init_weights:
        return torch.empty(size, device=device, dtype=dtype).uniform_(0.5, 1.5)
    fill = 0.0 if config.zero_init_factor == name else 1.0
    return torch.full((size,), fill, device=device, dtype=dtype)


def uniform_fan_in_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default init (Kaiming-uniform, a = sqrt(5)) for a given fan-in:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def adapter_dtype(base_layer: nn.Module) -> torch.dtype:
    """The dtype new adapter weights get: the base weight's if it is floating point, else (quantized) the default."""
    dtype = base_layer.weight.dtype
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def init_shared_pair(config: TiedLoraConfig, d_in: int, d_out: int, device=None,
                     dtype: Optional[torch.dtype] = None) -> tuple[nn.Parameter, nn.Parameter]:
    """Fresh shared (A (r, d_in), B (d_out, r)) for one projection group, initialised as described above."""
    A = torch.zeros(config.r, d_in, device=device, dtype=dtype)
    B = torch.zeros(d_out, config.r, device=device, dtype=dtype)
    if config.zero_init_factor != "A":
        uniform_fan_in_(A, d_in)
    if config.zero_init_factor != "B":
        uniform_fan_in_(B, config.r)
    return nn.Parameter(A, requires_grad=config.train_A), nn.Parameter(B, requires_grad=config.train_B)


class TiedLoraLayer(BaseTunerLayer):
    """Per-layer state of Tied-LoRA: references to the shared pair, the two vectors, dropout and scaling."""

    adapter_layer_names = ("tied_lora_A", "tied_lora_B", "tied_lora_u", "tied_lora_v")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "shared_key")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.shared_key: dict[str, str] = {}  # adapter -> group key of the shared pair in the tuner
        self.lora_dropout = nn.ModuleDict({})
        self.tied_lora_A = nn.ParameterDict({})  # adapter -> the shared A (same object as in the tuner)
        self.tied_lora_B = nn.ParameterDict({})  # adapter -> the shared B
        self.tied_lora_u = nn.ParameterDict({})  # adapter -> (r,)
        self.tied_lora_v = nn.ParameterDict({})  # adapter -> (d_out,)
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        # bitsandbytes 4/8-bit linears (QLoRA): forward goes through the quantized layer, merging dequantizes
        self.quantization_backend = resolve_quantization_backend(base)
        if not is_supported_linear(base):
            raise TypeError(f"Tied-LoRA only adapts (optionally quantized) linear layers, got {type(base).__name__}")
        self.in_features, self.out_features = get_in_out_features(base)
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, shared_A: nn.Parameter, shared_B: nn.Parameter, shared_key: str,
                     config: TiedLoraConfig, inference_mode: bool = False) -> None:
        """Attach adapter `adapter_name`: reference the shared pair and create this layer's u and v."""
        if shared_A.shape != (config.r, self.in_features) or shared_B.shape != (self.out_features, config.r):
            raise ValueError(
                f"shared pair {shared_key!r} has shapes A {tuple(shared_A.shape)}, B {tuple(shared_B.shape)}; "
                f"this layer needs A ({config.r}, {self.in_features}), B ({self.out_features}, {config.r})"
            )
        base = self.get_base_layer()
        device, dtype = base.weight.device, adapter_dtype(base)  # a quantized weight still reports its device
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.shared_key[adapter_name] = shared_key
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.tied_lora_A[adapter_name] = shared_A
        self.tied_lora_B[adapter_name] = shared_B
        self.tied_lora_u[adapter_name] = nn.Parameter(_init_vector(config, "u", config.r, device, dtype))
        self.tied_lora_v[adapter_name] = nn.Parameter(_init_vector(config, "v", self.out_features, device, dtype))

        frozen = tuple(f"tied_lora_{name}" for name in "ABuv" if not getattr(config, f"train_{name}"))
        self.frozen_peft_weight_names = {**self.frozen_peft_weight_names, adapter_name: frozen}
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """PEFT's move to the base layer's device/dtype, for this layer's own u and v only: the shared A and B
        belong to the tuner, and replacing this layer's reference with a moved copy would untie it."""
        shared = [(part, getattr(self, part).pop(adapter_name)) for part in ("tied_lora_A", "tied_lora_B")
                  if adapter_name in getattr(self, part)]
        try:
            super()._move_adapter_to_device_of_base_layer(adapter_name, device)
        finally:
            for part, param in shared:
                getattr(self, part)[adapter_name] = param

    def low_rank_factors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A', B') with dW = B' @ A': A' = diag(u) A of shape (r, d_in), B' = s * diag(v) B of shape (d_out, r)."""
        A = self.tied_lora_u[adapter][:, None] * self.tied_lora_A[adapter]
        B = self.scaling[adapter] * self.tied_lora_v[adapter][:, None] * self.tied_lora_B[adapter]
        return A, B

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """dW (d_out, d_in) = s * diag(v) B diag(u) A, in the adapter's dtype."""
        A, B = self.low_rank_factors(adapter)
        return B @ A

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add dW of the given (default: active) adapters into the base weight."""
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.tied_lora_u:
                continue
            weight = self.get_base_weight()
            merged = weight + self.get_delta_weight(adapter).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights; adapter {adapter!r} seems to be broken")
            self.set_base_weight(merged)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract merged adapters again, last merged first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            weight = self.get_base_weight()
            self.set_base_weight(weight - self.get_delta_weight(adapter).to(weight.dtype))

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        # dW = B' A' with B' (d_out, r), A' (r, d_in) (see low_rank_factors): an exact rank-r LoRA.
        return True


class Linear(nn.Module, TiedLoraLayer):
    """Tied-LoRA around an nn.Linear."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, shared_A: nn.Parameter, shared_B: nn.Parameter,
                 shared_key: str, config: TiedLoraConfig, **kwargs) -> None:
        super().__init__()
        TiedLoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, shared_A, shared_B, shared_key, config)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x (..., d_in) -> (..., d_out): the base output plus every active adapter's scaled low-rank update
        (with ``adapter_names``, one per row, each row's own adapter instead: `_mixed_batch_forward`)."""
        adapter_names = kwargs.pop("adapter_names", None)
        check_forward_args(self, x, adapter_names)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)  # 4-bit outputs may be views
        for adapter in self.active_adapters:
            if adapter in self.tied_lora_u:
                result = result + self._delta(adapter, x).to(result.dtype)
        return result

    def _delta(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """``s * diag(v) B diag(u) A dropout(x)`` for ``x (..., d_in)``, in the adapter's dtype (float32)."""
        A = self.tied_lora_A[adapter]
        h = F.linear(self.lora_dropout[adapter](x.to(A.dtype)), A) * self.tied_lora_u[adapter]  # (..., r)
        return F.linear(h, self.tied_lora_B[adapter]) * (self.scaling[adapter] * self.tied_lora_v[adapter])

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """Each row of ``x`` gets the update of the adapter named for it (``"__base__"``: none)."""
        result = self.base_layer(x, *args, **kwargs)
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        for adapter, rows in sub_batches(adapter_names, x.device):
            if adapter in self.tied_lora_u:
                result.index_add_(0, rows, self._delta(adapter, x[rows]).to(result.dtype))
        return result

    def __repr__(self) -> str:
        return "tied_lora." + super().__repr__()
