"""The PRoLoRA layer: holds the compact per-adapter tensors of one linear module and rebuilds A/B on the fly."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from peft.utils.integrations import gather_params_ctx

from prolora.config import ProLoraConfig
from prolora.rebuild import chunk_width, init_A_, init_B_, prolora_delta, rebuild_A, rebuild_B


class ProLoraLayer(BaseTunerLayer):
    """Per-adapter state of one adapted linear layer.

    Trainable (``nn.ParameterDict`` keyed by adapter name; shapes for rank r, u unshared ranks, r' = r - u)::

        prolora_A           A0  (r', ceil(d_in / m))
        prolora_B           B0  (ceil(d_out / n), r')
        prolora_A_unshared  A_u (u, d_in)
        prolora_B_unshared  B_u (d_out, u)

    An entry is absent when its size would be zero (u = 0, or u = r).
    """

    adapter_layer_names = ("prolora_A", "prolora_B", "prolora_A_unshared", "prolora_B_unshared")
    other_param_names = ("r", "unshared_r", "scaling", "copies", "strides", "prolora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.quantization_backend = resolve_quantization_backend(self.get_base_layer())
        self.r: dict[str, int] = {}
        self.unshared_r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.copies: dict[str, tuple[int, int]] = {}  # (m, n)
        self.strides: dict[str, tuple[int, int]] = {}  # (s_A, s_B)
        self.prolora_dropout = nn.ModuleDict({})
        self.prolora_A = nn.ParameterDict({})
        self.prolora_B = nn.ParameterDict({})
        self.prolora_A_unshared = nn.ParameterDict({})
        self.prolora_B_unshared = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters = []
        # Dims come from module attributes (never from weight.shape: ZeRO-3 partitions weights to shape (0,)).
        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if in_features is None or out_features is None:
            raise TypeError(f"PRoLoRA supports linear layers only, got {type(self.get_base_layer()).__name__}")
        self.in_features, self.out_features = in_features, out_features
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config: ProLoraConfig, inference_mode: bool = False) -> None:
        """Create (and initialise) the tensors of ``adapter_name`` for this layer."""
        m, n = config.reduce_lora_A_x, config.reduce_lora_B_x
        shared_r, u = config.shared_r, config.unshared_r
        self.r[adapter_name] = config.r
        self.unshared_r[adapter_name] = u
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.copies[adapter_name] = (m, n)
        self.strides[adapter_name] = config.strides()
        dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.prolora_dropout[adapter_name] = dropout

        if shared_r > 0:
            self.prolora_A[adapter_name] = nn.Parameter(torch.empty(shared_r, chunk_width(self.in_features, m)))
            self.prolora_B[adapter_name] = nn.Parameter(torch.empty(chunk_width(self.out_features, n), shared_r))
        if u > 0:
            self.prolora_A_unshared[adapter_name] = nn.Parameter(torch.empty(u, self.in_features))
            self.prolora_B_unshared[adapter_name] = nn.Parameter(torch.empty(self.out_features, u))
        self.reset_parameters(adapter_name, rectified=config.rectified_init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, rectified: bool = True) -> None:
        """Rectified Kaiming-uniform for A0 and A_u (fan = d_in), zeros for B0 and B_u."""
        for name in ("prolora_A", "prolora_A_unshared"):
            if adapter_name in getattr(self, name):
                init_A_(getattr(self, name)[adapter_name], self.in_features, rectified=rectified)
        for name in ("prolora_B", "prolora_B_unshared"):
            if adapter_name in getattr(self, name):
                init_B_(getattr(self, name)[adapter_name])

    def _chunks(self, adapter_name: str) -> tuple[Optional[nn.Parameter], ...]:
        """``(A0, B0, A_u, B_u)`` of ``adapter_name``; ``None`` where a part has size zero."""
        return tuple(getattr(self, name).get(adapter_name) for name in self.adapter_layer_names)

    def _adapter_params(self, adapter_name: str) -> list[nn.Parameter]:
        return [p for p in self._chunks(adapter_name) if p is not None]

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.r

    def rebuild(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)`` of ``adapter_name``, differentiable w.r.t. the chunks."""
        (m, n), (s_A, s_B) = self.copies[adapter_name], self.strides[adapter_name]
        A0, B0, A_u, B_u = self._chunks(adapter_name)
        return rebuild_A(A0, A_u, self.in_features, m, s_A), rebuild_B(B0, B_u, self.out_features, n, s_B)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``(alpha / r) B A`` as a ``(d_out, d_in)`` tensor in the adapter's dtype (fp32 math for half types on CPU)."""
        A, B = self.rebuild(adapter_name)
        dtype = A.dtype
        if A.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()
        return ((B @ A) * self.scaling[adapter_name]).to(dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True


class Linear(nn.Module, ProLoraLayer):
    """A PRoLoRA-adapted ``nn.Linear`` (or a bitsandbytes 4/8-bit linear through PEFT's quantization backend)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: ProLoraConfig, **kwargs) -> None:
        super().__init__()
        ProLoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add ``(alpha/r) B A`` of the given (default: active) adapters into the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if not self.has_adapter(name):
                continue
            with gather_params_ctx([self.get_base_layer().weight, *self._adapter_params(name)]):
                weight = self.get_base_weight()
                if safe_merge:
                    weight = weight.clone()
                weight = weight + self.get_delta_weight(name).to(weight.device, weight.dtype)
                if safe_merge and not torch.isfinite(weight).all():
                    raise ValueError(f"NaNs or infs in the merged weight: adapter {name!r} seems to be broken")
                self.set_base_weight(weight)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract the merged adapters again, newest first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with gather_params_ctx([self.get_base_layer().weight, *self._adapter_params(name)]):
                weight = self.get_base_weight()
                self.set_base_weight(weight - self.get_delta_weight(name).to(weight.device, weight.dtype))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x (..., d_in) -> (..., d_out)``: ``W0 x + sum over active adapters of (alpha/r) B A dropout(x)``."""
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        for name in self.active_adapters:
            if not self.has_adapter(name):
                continue
            params = self._adapter_params(name)
            # Cast explicitly (the authors' code crashed here with autocast off); autocast still wins when on.
            h = self.prolora_dropout[name](self._cast_input_dtype(x, params[0].dtype))
            if any(hasattr(p, "ds_id") for p in params):
                # DeepSpeed ZeRO-3 frees partitioned parameters after forward; plain autograd never needs the
                # chunks' values in backward (only the rebuilt A and B), so use it there.
                A, B = self.rebuild(name)
                delta = F.linear(F.linear(h, A), B) * self.scaling[name]
            else:
                A0, B0, A_u, B_u = self._chunks(name)
                (m, n), (s_A, s_B) = self.copies[name], self.strides[name]
                geometry = (self.in_features, self.out_features, m, n, s_A, s_B)
                delta = prolora_delta(h, A0, A_u, B0, B_u, geometry, self.scaling[name])
            result = result + delta
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "prolora." + super().__repr__()
