r"""PRoLoRA's rebuild rule and initialisation, as plain functions of tensors (no PEFT here).

PRoLoRA (Wang et al., ACL 2024, arXiv 2402.16902) is LoRA whose factors are *rebuilt every forward pass* from a
small shared chunk that is broadcast along the hidden dimension with a rotation, plus a few unshared ranks.
For a frozen linear layer ``W0 : R^{d_in} -> R^{d_out}`` (weight ``(d_out, d_in)``) the output is

.. math::

    y = W_0 x + \frac{\alpha}{r}\, B\, A\, \mathrm{dropout}(x)

exactly like LoRA, with ``A`` of shape ``(r, d_in)`` and ``B`` of shape ``(d_out, r)``. What differs is where
``A`` and ``B`` come from. Let ``u`` be the number of unshared ranks, ``r' = r - u`` the shared ones, ``m`` / ``n``
the number of copies of the A / B chunk (``reduce_lora_A_x`` / ``reduce_lora_B_x``) and

* ``c_A = ceil(d_in / m)``, ``c_B = ceil(d_out / n)``  — chunk widths,
* ``s_A = max(floor(r' / m), 1)``, ``s_B = max(floor(r' / n), 1)`` — rotation strides (the authors' automatic
  choice; 0 disables rotation, giving the "CLoRA" ablation).

Trainable tensors (everything else is derived)::

    A0  (r', c_A)    shared chunk of A          A_u (u, d_in)    unshared rows of A
    B0  (c_B, r')    shared chunk of B          B_u (d_out, u)   unshared columns of B

Rebuilt A — copy ``k`` of ``A0`` covers input columns ``[k*c_A, (k+1)*c_A)`` and has its rank rows rolled up by
``k*s_A`` (row ``i`` of copy ``k`` is row ``(i + k*s_A) mod r'`` of ``A0``); the tail past ``d_in`` is cut and the
unshared rows go below. Picture for r'=3, m=3, s_A=1 (letters are the rows of A0)::

              block 0   block 1   block 2 (truncated)
    rank 0  [   a   |    b    |   c  ]
    rank 1  [   b   |    c    |   a  ]        A[i, k*c_A + j] = A0[(i + k*s_A) mod r', j]
    rank 2  [   c   |    a    |   b  ]
    rank 3+ [            A_u             ]    (u rows, full width d_in)

Rebuilt B is the same along ``d_out``: ``B[k*c_B + j, i] = B0[j, (i + k*s_B) mod r']`` for ``i < r'``, rows past
``d_out`` cut, and ``B[:, r':] = B_u``. So ``A`` is ``(r, d_in)`` and ``B`` is ``(d_out, r)`` and the forward pass
runs LoRA's two matmuls on them. The gather is a tiny index op on the chunk (its index tensor is cached), so the
hot path adds O(r * (d_in + d_out)) work to LoRA's O(tokens * r * (d_in + d_out)).

Special cases: ``m = n = 1`` (one copy, no rotation) or ``u = r`` (no shared ranks) is plain LoRA.

Initialisation ("rectified"): ``A0`` and ``A_u`` are Kaiming-uniform with ``a = sqrt(5)`` (``nn.Linear``'s default)
but with the fan set to the *full* ``d_in``, i.e. ``U(-1/sqrt(d_in), 1/sqrt(d_in))`` — so the rebuilt ``A`` has the
same statistics as a vanilla LoRA ``A``. Without rectification (ablation) the chunk's own width ``c_A`` is the fan,
giving a ``sqrt(m)`` times larger bound. ``B0`` and ``B_u`` start at zero, so the adapter starts as a no-op
(``init_weights=False`` draws them like an ``nn.Linear`` with fan ``r`` instead, PEFT's non-identity init for tests).

Two named tuples carry the pieces around: `Chunks` (the trainable tensors, in the order the layer stores them) and
`Geometry` (the integers that fix the rebuild of one layer).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from prolora.dropout import apply_dropped, sample_dropped, zero_dropped_


class Chunks(NamedTuple):
    """The trainable tensors of one adapter on one layer; ``None`` where a part has size zero (u = 0 or u = r)."""

    A0: Optional[torch.Tensor]  # (r', c_A)
    B0: Optional[torch.Tensor]  # (c_B, r')
    A_u: Optional[torch.Tensor]  # (u, d_in)
    B_u: Optional[torch.Tensor]  # (d_out, u)


class Geometry(NamedTuple):
    """What, besides the chunks, fixes the rebuilt A (r, d_in) and B (d_out, r) of one layer."""

    in_features: int  # d_in
    out_features: int  # d_out
    m: int  # copies of the A chunk along d_in (reduce_lora_A_x)
    n: int  # copies of the B chunk along d_out (reduce_lora_B_x)
    s_A: int  # rotation stride of A (0 = no rotation)
    s_B: int  # rotation stride of B


def chunk_width(features: int, copies: int) -> int:
    """Width of the shared chunk that ``copies`` copies stretch over ``features`` columns: ``ceil(features/copies)``."""
    return -(-features // copies)


def default_stride(shared_r: int, copies: int) -> int:
    """The authors' automatic rotation stride: ``max(floor(r' / copies), 1)``."""
    return max(shared_r // copies, 1)


def _gather_index_cpu(kind: str, shared_r: int, width: int, features: int, stride: int) -> torch.Tensor:
    """Flat index into the chunk's storage that yields the whole shared block in one gather.

    ``kind == "A"``: chunk ``A0 (r', c_A)``, result ``(r', d_in)`` with ``[i, x] = A0[(i + k*s) mod r', x - k*c_A]``.
    ``kind == "B"``: chunk ``B0 (c_B, r')``, result ``(d_out, r')`` with ``[o, i] = B0[o - k*c_B, (i + k*s) mod r']``.
    (``k = x // c_A`` / ``o // c_B`` is the copy that column ``x`` / row ``o`` falls in, so the chunk width and
    the number of features fix the copies.)
    """
    pos = torch.arange(features)
    k, j = pos // width, pos % width  # copy index and offset inside the copy
    rank = (torch.arange(shared_r).unsqueeze(1 if kind == "A" else 0) + (k * stride).unsqueeze(0 if kind == "A" else 1))
    rank = rank % shared_r  # A: (r', d_in); B: (d_out, r')
    if kind == "A":
        return (rank * width + j.unsqueeze(0)).reshape(-1)
    return (j.unsqueeze(1) * shared_r + rank).reshape(-1)


_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def gather_index(kind: str, shared_r: int, width: int, features: int, stride: int,
                 device: torch.device) -> torch.Tensor:
    """Cached `_gather_index_cpu` on ``device``: built once per geometry and device, never per step."""
    key = (kind, shared_r, width, features, stride, device)
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _INDEX_CACHE[key] = _gather_index_cpu(kind, shared_r, width, features, stride).to(device)
    return index


def _check_width(name: str, width: int, features: int, copies: int) -> None:
    if width != chunk_width(features, copies):
        raise ValueError(f"{name} chunk has width {width}; {copies} copies over {features} features need "
                         f"ceil({features}/{copies}) = {chunk_width(features, copies)}")


def rebuild_A(A0: torch.Tensor | None, A_u: torch.Tensor | None, in_features: int, copies: int,
              stride: int) -> torch.Tensor:
    """Full ``A`` ``(r, d_in)`` from the shared chunk ``A0`` ``(r', c_A)`` and the unshared rows ``A_u`` ``(u, d_in)``.

    Either part may be ``None`` (``r' = 0`` or ``u = 0``). Differentiable w.r.t. both parts. ``copies`` (m) is
    checked against the chunk's width.
    """
    parts = []
    if A0 is not None:
        shared_r, width = A0.shape
        _check_width("A0", width, in_features, copies)
        index = gather_index("A", shared_r, width, in_features, stride, A0.device)
        parts.append(A0.reshape(-1).index_select(0, index).view(shared_r, in_features))
    if A_u is not None:
        parts.append(A_u)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def rebuild_B(B0: torch.Tensor | None, B_u: torch.Tensor | None, out_features: int, copies: int,
              stride: int) -> torch.Tensor:
    """Full ``B`` ``(d_out, r)`` from the shared chunk ``B0`` ``(c_B, r')`` and the unshared columns ``B_u``
    ``(d_out, u)``; the counterpart of `rebuild_A`."""
    parts = []
    if B0 is not None:
        width, shared_r = B0.shape
        _check_width("B0", width, out_features, copies)
        index = gather_index("B", shared_r, width, out_features, stride, B0.device)
        parts.append(B0.reshape(-1).index_select(0, index).view(out_features, shared_r))
    if B_u is not None:
        parts.append(B_u)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def fold_A_grad(dA: torch.Tensor, A0: torch.Tensor | None, A_u: torch.Tensor | None, stride: int):
    """Map a gradient w.r.t. the full ``A`` ``(r, d_in)`` back onto ``(A0, A_u)`` (the adjoint of `rebuild_A`)."""
    shared_r = 0 if A0 is None else A0.shape[0]
    dA0 = dA_u = None
    if A0 is not None:
        index = gather_index("A", shared_r, A0.shape[1], dA.shape[1], stride, A0.device)
        flat = torch.zeros(A0.numel(), dtype=dA.dtype, device=dA.device)
        dA0 = flat.index_add_(0, index, dA[:shared_r].reshape(-1)).view_as(A0)
    if A_u is not None:
        dA_u = dA[shared_r:]
    return dA0, dA_u


def fold_B_grad(dB: torch.Tensor, B0: torch.Tensor | None, B_u: torch.Tensor | None, stride: int):
    """Map a gradient w.r.t. the full ``B`` ``(d_out, r)`` back onto ``(B0, B_u)`` (the adjoint of `rebuild_B`)."""
    shared_r = 0 if B0 is None else B0.shape[1]
    dB0 = dB_u = None
    if B0 is not None:
        index = gather_index("B", shared_r, B0.shape[0], dB.shape[0], stride, B0.device)
        flat = torch.zeros(B0.numel(), dtype=dB.dtype, device=dB.device)
        dB0 = flat.index_add_(0, index, dB[:, :shared_r].contiguous().reshape(-1)).view_as(B0)
    if B_u is not None:
        dB_u = dB[:, shared_r:]
    return dB0, dB_u


def init_A_(tensor: torch.Tensor, in_features: int, rectified: bool = True) -> torch.Tensor:
    """Kaiming-uniform (a=sqrt(5)) in place: fan = ``in_features`` when rectified, else the tensor's own width."""
    fan = in_features if rectified else tensor.shape[1]
    bound = 1.0 / math.sqrt(fan)  # gain sqrt(1/3) * sqrt(3 / fan) for a = sqrt(5)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def init_B_(tensor: torch.Tensor, r: int, zero: bool = True) -> torch.Tensor:
    """In place: zeros (the paper: the adapter is a no-op at step 0), or with ``zero=False`` Kaiming-uniform with
    fan ``r`` (an ``nn.Linear(r, d_out)``'s init, as PEFT's ``init_lora_weights=False``) for a non-identity adapter."""
    with torch.no_grad():
        if zero:
            return tensor.zero_()
        bound = 1.0 / math.sqrt(r)
        return tensor.uniform_(-bound, bound)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _ProLoraDelta(torch.autograd.Function):
    """``result + (scale * drop(x) A^T) B^T`` that keeps only ``x``, ``h = scale * drop(x) A^T`` and the dropped
    positions for backward.

    The scale multiplies the rank-r side, ``h (..., r)`` forward and ``dh (..., r)`` backward, never a
    ``(..., d_out)`` tensor: two elementwise passes over the layer's output fewer than LoRA's ``B(A x) * scale``.
    The base layer's output ``result (..., d_out)`` goes in as the addend of the second matmul (``addmm``), which
    saves LoRA's separate ``result + delta`` pass, and its gradient is ``dy`` itself.

    Dropout (drop probability ``p > 0``): `dropout.sample_dropped` chooses the zeroed entries of ``x``, and
    ``1 / (1 - p)`` joins ``scale`` — the same ``(alpha/r) B A dropout(x)`` as LoRA's ``nn.Dropout``, without its
    float mask and dropped copy of ``x`` in memory (backward zeroes a fresh copy of ``x`` again).

    A plain autograd graph would also keep the rebuilt ``A`` (r, d_in) and ``B`` (d_out, r) alive from forward to
    backward — memory LoRA does not need, since its A and B are the parameters themselves. Here backward rebuilds
    them from the chunks (a cheap gather) and folds their gradients back onto the chunks (an index_add), so
    PRoLoRA's activation memory is at most LoRA's and its gradient memory is that of the compact chunks.
    """

    @staticmethod
    def forward(ctx, x, result, scale, p, geometry: Geometry, A0, A_u, B0, B_u):
        A = rebuild_A(A0, A_u, geometry.in_features, geometry.m, geometry.s_A)
        B = rebuild_B(B0, B_u, geometry.out_features, geometry.n, geometry.s_B)
        dropped = sample_dropped(x.shape, p, x.device) if p > 0 else None
        scale = scale / (1 - p)
        xd = x if dropped is None else apply_dropped(x, dropped)
        h = (xd @ A.t()) * scale
        ctx.scale, ctx.geometry, ctx.result_dtype = scale, geometry, None if result is None else result.dtype
        ctx.autocast = (x.device.type, *_autocast_state(x.device.type))
        ctx.save_for_backward(x, h, dropped, A0, A_u, B0, B_u)
        if result is None:
            return h @ B.t()
        if result.dtype == h.dtype and (B.dtype == h.dtype or ctx.autocast[1]):  # (h is in autocast's dtype)
            out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), B.t())
            return out.view(*h.shape[:-1], -1)
        return result + (h @ B.t())  # mixed dtypes: promote as `result + delta` does

    @staticmethod
    def backward(ctx, dy):
        x, h, dropped, A0, A_u, B0, B_u = ctx.saved_tensors
        geometry: Geometry = ctx.geometry
        device_type, autocast_on, autocast_dtype = ctx.autocast
        A = rebuild_A(A0, A_u, geometry.in_features, geometry.m, geometry.s_A)
        B = rebuild_B(B0, B_u, geometry.out_features, geometry.n, geometry.s_B)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
            dh = (dy @ B) * ctx.scale  # (..., r)
            dx = dh @ A if ctx.needs_input_grad[0] else None
            dB = dy.reshape(-1, dy.shape[-1]).t() @ h.reshape(-1, h.shape[-1])  # (d_out, r); h carries the scale
            xd = x if dropped is None else apply_dropped(x, dropped)
            dA = dh.reshape(-1, dh.shape[-1]).t() @ xd.reshape(-1, x.shape[-1])  # (r, d_in)
        dA0, dA_u = fold_A_grad(dA.to(A.dtype), A0, A_u, geometry.s_A)
        dB0, dB_u = fold_B_grad(dB.to(B.dtype), B0, B_u, geometry.s_B)
        if dx is not None:
            dx = dx.to(x.dtype)
            if dropped is not None:
                zero_dropped_(dx, dropped)
        d_result = None if ctx.result_dtype is None or not ctx.needs_input_grad[1] else dy.to(ctx.result_dtype)
        return dx, d_result, None, None, None, dA0, dA_u, dB0, dB_u


def prolora_delta(x, A0, A_u, B0, B_u, geometry: Geometry, scale: float, result: torch.Tensor | None = None,
                  dropout: float = 0.0) -> torch.Tensor:
    """``scale * B A dropout(x)`` for ``x (..., d_in)`` -> ``(..., d_out)``, with A and B rebuilt from the chunks;
    with ``result (..., d_out)`` (the base layer's output) it returns ``result + scale * B A dropout(x)``.

    ``geometry`` is a `Geometry` (a plain ``(d_in, d_out, m, n, s_A, s_B)`` tuple is accepted); ``dropout`` is the
    drop probability (inverted dropout, as ``nn.Dropout``; pass 0 in eval mode). Same value and gradients as
    ``result + F.linear(F.linear(dropout(x), rebuild_A(...)), rebuild_B(...)) * scale``, with at most LoRA's
    activation memory.
    """
    return _ProLoraDelta.apply(x, result, scale, dropout, Geometry(*geometry), A0, A_u, B0, B_u)
