"""The PRoLoRA layer: holds the compact per-adapter tensors of one linear module and rebuilds A/B on the fly."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from peft.utils.integrations import gather_params_ctx
from torch import nn

from prolora.config import ProLoraConfig
from prolora.dropout import apply_dropped, sample_dropped
from prolora.mixed_batch import check_forward_args, sub_batches
from prolora.peft_compat import get_in_out_features
from prolora.rebuild import (
    Chunks,
    Geometry,
    chunk_width,
    gather_index,
    init_A_,
    init_B_,
    prolora_delta,
    rebuild_A,
    rebuild_B,
)


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
    mixed_batch_cache: Optional[dict] = None  # per-call state of a mixed batch (see `prolora.mixed_batch`)

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
        in_features, out_features = get_in_out_features(self.get_base_layer())
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
        self.reset_parameters(adapter_name, rectified=config.rectified_init, init_weights=config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, rectified: bool = True, init_weights: bool = True) -> None:
        """Rectified Kaiming-uniform for A0 and A_u (fan = d_in); zeros for B0 and B_u, or with
        ``init_weights=False`` Kaiming-uniform with fan r (a non-identity adapter, for tests and debugging)."""
        for name in ("prolora_A", "prolora_A_unshared"):
            if adapter_name in getattr(self, name):
                init_A_(getattr(self, name)[adapter_name], self.in_features, rectified=rectified)
        for name in ("prolora_B", "prolora_B_unshared"):
            if adapter_name in getattr(self, name):
                init_B_(getattr(self, name)[adapter_name], self.r[adapter_name], zero=init_weights)

    def _chunks(self, adapter_name: str) -> Chunks:
        """`Chunks` ``(A0, B0, A_u, B_u)`` of ``adapter_name``; ``None`` where a part has size zero."""
        return Chunks(*(getattr(self, name).get(adapter_name) for name in self.adapter_layer_names))

    def geometry(self, adapter_name: str) -> Geometry:
        """The `Geometry` (d_in, d_out, m, n, s_A, s_B) that rebuilds ``adapter_name``'s A and B on this layer."""
        (m, n), (s_A, s_B) = self.copies[adapter_name], self.strides[adapter_name]
        return Geometry(self.in_features, self.out_features, m, n, s_A, s_B)

    def _adapter_params(self, adapter_name: str) -> list[nn.Parameter]:
        return [p for p in self._chunks(adapter_name) if p is not None]

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.r

    def rebuild(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)`` of ``adapter_name``, differentiable w.r.t. the
        chunks."""
        chunks, geometry = self._chunks(adapter_name), self.geometry(adapter_name)
        return (rebuild_A(chunks.A0, chunks.A_u, geometry.in_features, geometry.m, geometry.s_A),
                rebuild_B(chunks.B0, chunks.B_u, geometry.out_features, geometry.n, geometry.s_B))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``(alpha / r) B A`` as a ``(d_out, d_in)`` tensor in the adapter's dtype (fp32 math for half types on
        CPU)."""
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
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with gather_params_ctx([self.get_base_layer().weight, *self._adapter_params(name)]):
                weight = self.get_base_weight()
                self.set_base_weight(weight - self.get_delta_weight(name).to(weight.device, weight.dtype))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x (..., d_in) -> (..., d_out)``: ``W0 x + sum over active adapters of (alpha/r) B A dropout(x)``.

        With ``adapter_names`` (one per row of ``x``; injected by `ProLoraModel`'s mixed-batch hooks) each row gets
        the update of its own adapter instead (see `_mixed_batch_forward`).
        """
        adapter_names = kwargs.pop("adapter_names", None)
        check_forward_args(self, x, adapter_names)
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs).to(previous_dtype)
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
            h = self._cast_input_dtype(x, params[0].dtype)
            dropout = self.prolora_dropout[name]
            p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
            if any(hasattr(param, "ds_id") for param in params):
                # DeepSpeed ZeRO-3 frees partitioned parameters after forward; plain autograd never needs the
                # chunks' values in backward (only the rebuilt A and B), so use it there, with the fused path's
                # dropout draws (the same entries for the same seed) and 1 / (1 - p) on the rank-r side.
                A, B = self.rebuild(name)
                if p > 0:
                    h = apply_dropped(h, sample_dropped(h.shape, p, h.device))
                result = result + F.linear(F.linear(h, A) * (self.scaling[name] / (1 - p)), B)
            else:  # the fused path draws dropout itself (`prolora.dropout`), and adds onto `result` in its matmul
                A0, B0, A_u, B_u = self._chunks(name)
                result = prolora_delta(h, A0, A_u, B0, B_u, self.geometry(name), self.scaling[name], result, p)
        return result.to(previous_dtype)

    def rebuild_stacked(self, adapter_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` ``(k, r, d_in)`` and ``B`` ``(k, d_out, r)`` of k adapters of one `_stack_key` (same r, u, m, n,
        strides), rebuilt together: their chunks are stacked and one gather per factor expands all of them."""
        geometry = self.geometry(adapter_names[0])
        A0, B0, A_u, B_u = (torch.stack([part[name] for name in adapter_names]) if adapter_names[0] in part else None
                            for part in (getattr(self, attr) for attr in self.adapter_layer_names))
        A_parts, B_parts = [], []
        if A0 is not None:
            k, shared_r, width = A0.shape
            index = gather_index("A", shared_r, width, geometry.in_features, geometry.s_A, A0.device)
            A_parts.append(A0.reshape(k, -1).index_select(1, index).view(k, shared_r, geometry.in_features))
            width = B0.shape[1]
            index = gather_index("B", shared_r, width, geometry.out_features, geometry.s_B, B0.device)
            B_parts.append(B0.reshape(k, -1).index_select(1, index).view(k, geometry.out_features, shared_r))
        if A_u is not None:
            A_parts.append(A_u)
            B_parts.append(B_u)
        return torch.cat(A_parts, dim=1), torch.cat(B_parts, dim=2)

    def _stack_key(self, adapter_name: str) -> tuple:
        """Adapters with equal keys can be rebuilt together by `rebuild_stacked`."""
        return (self.r[adapter_name], self.unshared_r[adapter_name], self.geometry(adapter_name),
                self._adapter_params(adapter_name)[0].dtype)

    def _mixed_batch_plan(self, adapter_names: list[str], device: torch.device) -> list[tuple]:
        """What a mixed batch multiplies with: ``[(A, B, rows, which, scale)]``, one entry per group of adapters
        that `rebuild_stacked` can rebuild together (equal `_stack_key`).

        A single adapter: ``A (r, d_in)``, ``B (d_out, r)``, ``which`` is ``None``, ``scale`` a float; ``rows`` is
        ``None`` when that adapter has every row of the batch. Several: ``A (k, r, d_in)``, ``B (k, d_out, r)``,
        ``rows`` the batch rows they own, ``which[i]`` the adapter of ``rows[i]``, ``scale (k,)``. Rows of
        ``"__base__"`` or of an adapter this layer lacks appear nowhere. Built once per call and kept in
        ``mixed_batch_cache`` for the call's later forwards (the decoding steps of one ``generate``).
        """
        cache = self.mixed_batch_cache
        if cache is not None and "plan" in cache:
            return cache["plan"]
        groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
        for name, rows in sub_batches(adapter_names, device):
            if self.has_adapter(name):
                groups.setdefault(self._stack_key(name), []).append((name, rows))
        plan = []
        for members in groups.values():
            if len(members) == 1:
                name, rows = members[0]
                A, B = self.rebuild(name)
                every_row = len(rows) == len(adapter_names)  # rows come sorted, so they are then 0..batch-1
                plan.append((A, B, None if every_row else rows, None, self.scaling[name]))
                continue
            A, B = self.rebuild_stacked([name for name, _ in members])
            rows = torch.cat([r for _, r in members])
            which = torch.cat([torch.full_like(r, i) for i, (_, r) in enumerate(members)])  # row -> adapter
            scale = torch.tensor([self.scaling[name] for name, _ in members], dtype=A.dtype, device=A.device)
            plan.append((A, B, rows, which, scale))
        if cache is not None and not torch.is_grad_enabled():
            cache["plan"] = plan  # (with gradients on, each forward rebuilds: a cached graph is used only once)
        return plan

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """Rows of ``x`` named ``"__base__"`` (or an adapter this layer lacks) get ``W0 x`` only; the others add
        their adapter's update. A and B of each adapter in the batch are rebuilt once per call, for all its rows.

        Adapters of one geometry are rebuilt together (`rebuild_stacked`) and each row then multiplies with its
        own A and B in one batched matmul, so the work per layer does not grow with the number of adapters.
        """
        result = self.base_layer(x, *args, **kwargs)
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        if self.training:  # only reachable by calling the layer directly; dropout: one adapter at a time
            for name, rows in sub_batches(adapter_names, x.device):
                if self.has_adapter(name):
                    A, B = self.rebuild(name)
                    h = self.prolora_dropout[name](self._cast_input_dtype(x[rows], A.dtype))
                    result.index_add_(0, rows, F.linear(F.linear(h, A) * self.scaling[name], B).to(result.dtype))
            return result
        for A, B, rows, which, scale in self._mixed_batch_plan(adapter_names, x.device):
            if which is None:
                h = self._cast_input_dtype(x if rows is None else x[rows], A.dtype)
                delta = F.linear(F.linear(h, A) * scale, B).to(result.dtype)  # scale the rank-r side
                if rows is None:
                    result = result + delta
                else:
                    result.index_add_(0, rows, delta)
                continue
            h = self._cast_input_dtype(x[rows], A.dtype).reshape(len(rows), -1, self.in_features)
            h = torch.bmm(h, A[which].transpose(1, 2)) * scale[which].view(-1, 1, 1)  # (rows, tokens, r)
            delta = torch.bmm(h, B[which].transpose(1, 2))  # (rows, tokens, d_out)
            result.index_add_(0, rows, delta.view(len(rows), *result.shape[1:]).to(result.dtype))
        return result

    def __repr__(self) -> str:
        return "prolora." + super().__repr__()
