"""The MoS layer: references its group's shard pools, holds its own shard indices, assembles A/B on the fly.

Storage: the pools ``P_A (N, w_A)`` / ``P_B (N, w_B)`` live once on the tuner (`MosModel`) in ``ModuleDict[adapter]
-> ParameterDict[group]``; each layer's ``mos_pool_A[adapter]`` / ``mos_pool_B[adapter]`` is *the same*
``nn.Parameter`` object, so gradients of all layers accumulate in one tensor and the optimizer sees it once. The
tuner drops these references when saving. The indices ``I_A`` / ``I_B`` ``(r * l,)`` (int64 buffers,
``mos_index_A`` / ``mos_index_B``) are per layer, saved with the adapter and never trained. The rule is in
`prolora.mos.rebuild`.

Dtype, as PEFT's contract: pools are created in the base layer's dtype (float32 for a quantized base);
``autocast_adapter_dtype=True`` upcasts float16/bfloat16 pools to float32 once, on the tuner. The input is cast to
the adapter's dtype and the output back.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from peft.utils.integrations import gather_params_ctx
from torch import nn

from prolora.dropout import apply_dropped, sample_dropped
from prolora.mixed_batch import check_forward_args, sub_batches
from prolora.mos.config import MosConfig
from prolora.mos.rebuild import assemble_A, assemble_B, mos_delta
from prolora.peft_compat import BufferDict, get_in_out_features, is_supported_linear

POOL_PARTS = ("mos_pool_A", "mos_pool_B")


def adapter_dtype(base_layer: nn.Module) -> torch.dtype:
    """The dtype new adapter weights get: the base weight's if it is floating point, else (quantized) the default."""
    dtype = base_layer.weight.dtype
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


class MosLayer(BaseTunerLayer):
    """Per-layer state of MoS (keyed by adapter name): pool references, shard indices, rank, scaling, dropout."""

    adapter_layer_names = ("mos_pool_A", "mos_pool_B")
    other_param_names = ("r", "lora_alpha", "scaling", "shards", "pool_key", "mos_dropout", "mos_index_A",
                         "mos_index_B")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.shards: dict[str, int] = {}  # l
        self.pool_key: dict[str, str] = {}  # adapter -> group key of the pools in the tuner
        self.mos_dropout = nn.ModuleDict({})
        self.mos_pool_A = nn.ParameterDict({})  # adapter -> P_A (N, w_A), the tuner's object
        self.mos_pool_B = nn.ParameterDict({})  # adapter -> P_B (N, w_B)
        self.mos_index_A = BufferDict({}, persistent=True)  # adapter -> I_A (r * l,) int64
        self.mos_index_B = BufferDict({}, persistent=True)  # adapter -> I_B (r * l,) int64
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        self.quantization_backend = resolve_quantization_backend(base)
        if not is_supported_linear(base):
            raise TypeError(f"MoS only adapts (optionally quantized) linear layers, got {type(base).__name__}")
        # Dims from module attributes (never weight.shape: ZeRO-3 partitions weights to shape (0,)).
        self.in_features, self.out_features = get_in_out_features(base)
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, pool_A: nn.Parameter, pool_B: nn.Parameter, pool_key: str,
                     index_A: torch.Tensor, index_B: torch.Tensor, config: MosConfig,
                     inference_mode: bool = False) -> None:
        """Attach ``adapter_name``: reference the group's pools and keep this layer's indices."""
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.shards[adapter_name] = config.shards_per_vector
        self.pool_key[adapter_name] = pool_key
        self.mos_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.mos_pool_A[adapter_name] = pool_A
        self.mos_pool_B[adapter_name] = pool_B
        device = self.get_base_layer().weight.device
        self.mos_index_A[adapter_name] = index_A.to(device=device, dtype=torch.long)
        self.mos_index_B[adapter_name] = index_B.to(device=device, dtype=torch.long)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """PEFT's move to the base layer's device/dtype for this layer's own tensors only: the pools belong to the
        tuner, and replacing this layer's reference with a moved copy would untie it."""
        shared = [(part, getattr(self, part).pop(adapter_name)) for part in POOL_PARTS
                  if adapter_name in getattr(self, part)]
        try:
            super()._move_adapter_to_device_of_base_layer(adapter_name, device)
        finally:
            for part, param in shared:
                getattr(self, part)[adapter_name] = param

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.mos_pool_A

    def assemble(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's ``A (r, d_in)`` and ``B (d_out, r)`` of ``adapter_name``, differentiable w.r.t. the pools."""
        shards = self.shards[adapter_name]
        A = assemble_A(self.mos_pool_A[adapter_name], self.mos_index_A[adapter_name], self.in_features, shards)
        B = assemble_B(self.mos_pool_B[adapter_name], self.mos_index_B[adapter_name], self.out_features, shards)
        return A, B

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``(alpha / r) B A`` as ``(d_out, d_in)`` in the adapter's dtype (fp32 math for half types on CPU)."""
        A, B = self.assemble(adapter_name)
        dtype = A.dtype
        if A.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()
        return ((B @ A) * self.scaling[adapter_name]).to(dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True  # dW = B A with the assembled rank-r factors: an exact LoRA (see `prolora.mos.export`)


class Linear(nn.Module, MosLayer):
    """A MoS-adapted ``nn.Linear`` (or a bitsandbytes 4/8-bit linear through PEFT's quantization backend)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, pool_A: nn.Parameter, pool_B: nn.Parameter,
                 pool_key: str, index_A: torch.Tensor, index_B: torch.Tensor, config: MosConfig, **kwargs) -> None:
        super().__init__()
        MosLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, pool_A, pool_B, pool_key, index_A, index_B, config)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add ``(alpha/r) B A`` of the given (default: active) adapters into the base weight."""
        for name in check_adapters_to_merge(self, adapter_names):
            if not self.has_adapter(name):
                continue
            with gather_params_ctx([self.get_base_layer().weight, self.mos_pool_A[name], self.mos_pool_B[name]]):
                weight = self.get_base_weight()
                merged = weight + self.get_delta_weight(name).to(weight.device, weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs or infs in the merged weight: adapter {name!r} seems to be broken")
                self.set_base_weight(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract the merged adapters again, newest first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with gather_params_ctx([self.get_base_layer().weight, self.mos_pool_A[name], self.mos_pool_B[name]]):
                weight = self.get_base_weight()
                self.set_base_weight(weight - self.get_delta_weight(name).to(weight.device, weight.dtype))

    mixed_batch_cache: Optional[dict] = None  # per-call state of a mixed batch (see `prolora.mixed_batch`)

    def _delta(self, adapter_name: str, x: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """``(alpha/r) B A dropout(x)`` for ``x (..., d_in)`` -> ``(..., d_out)``, in the adapter's dtype.

        ``cached``: within one mixed-batch call without gradients (a ``generate``), A and B are assembled once per
        adapter and kept in ``mixed_batch_cache`` for the call's later decoding steps (dropped when it ends)."""
        cache = self.mixed_batch_cache if cached and not torch.is_grad_enabled() else None
        if cache is not None and adapter_name in cache:
            A, B = cache[adapter_name]
        else:
            A, B = self.assemble(adapter_name)
            if cache is not None:
                cache[adapter_name] = (A, B)
        h = self.mos_dropout[adapter_name](self._cast_input_dtype(x, A.dtype))
        return F.linear(F.linear(h, A) * self.scaling[adapter_name], B)  # the scale acts on the rank-r side

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x (..., d_in) -> (..., d_out)``: ``W0 x`` plus every active adapter's ``(alpha/r) B A dropout(x)``;
        with ``adapter_names`` (one per row, from `MosModel`'s mixed-batch hooks) each row gets its own adapter."""
        adapter_names = kwargs.pop("adapter_names", None)
        check_forward_args(self, x, adapter_names)
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)  # 4-bit outputs may be views
        if adapter_names is not None:
            for name, rows in sub_batches(adapter_names, x.device):
                if self.has_adapter(name):
                    result.index_add_(0, rows, self._delta(name, x[rows], cached=True).to(result.dtype))
            return result.to(previous_dtype)
        for name in self.active_adapters:
            if not self.has_adapter(name):
                continue
            pool_A, pool_B = self.mos_pool_A[name], self.mos_pool_B[name]
            dropout = self.mos_dropout[name]
            p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
            h = self._cast_input_dtype(x, pool_A.dtype)
            if hasattr(pool_A, "ds_id") or hasattr(pool_B, "ds_id"):
                # DeepSpeed ZeRO-3 frees partitioned parameters after each module's forward (the shared pools too,
                # fetched again by the next layer), so backward must not read them: plain autograd through the
                # gather keeps only the indices and the assembled A and B. Dropout as the fused path draws it
                # (the same entries for the same seed), 1 / (1 - p) on the rank-r side.
                A, B = self.assemble(name)
                if p > 0:
                    h = apply_dropped(h, sample_dropped(h.shape, p, h.device))
                result = result + F.linear(F.linear(h, A) * (self.scaling[name] / (1 - p)), B).to(result.dtype)
                continue
            result = mos_delta(h, pool_A, pool_B, self.mos_index_A[name], self.mos_index_B[name], self.in_features,
                               self.out_features, self.shards[name], self.scaling[name], result, p)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "mos." + super().__repr__()
