r"""MoS's rule (Mixture of Shards, Wang et al., ICLR 2025, arXiv 2410.00938) as plain functions of tensors.

MoS is LoRA whose factors are *assembled every forward pass* from small shards held in a pool that many layers
share. For a frozen linear layer ``W0 : R^{d_in} -> R^{d_out}`` the output is LoRA's

.. math::

    y = W_0 x + \frac{\alpha}{r}\, B\, A\, \mathrm{dropout}(x), \qquad A: (r, d_{in}),\ B: (d_{out}, r)

What differs is where ``A`` and ``B`` come from. Symbols (config names in brackets):

* ``r``  [``r``]                 rank of every layer's A and B (and the ``alpha / r`` scaling),
* ``R``  [``mos_r``]             the *equivalent LoRA rank*: the pool holds as many numbers as LoRA of rank R would,
* ``p``  [``private_r``]         rank vectors per layer whose shards are private to that layer (shard privatization),
* ``l``  [``shards_per_vector``] shards per rank vector (vector sharding; 1 = whole vectors),
* ``L``                          number of layers in a pool's group (one pool per projection type, see below),
* ``w_A = ceil(d_in / l)``, ``w_B = ceil(d_out / l)`` — shard widths,
* ``N = R * L * l`` shards per pool, of which ``N_s = (R - p) * L * l`` are shared and ``p * L * l`` private.

Trainable tensors, once per *group* of layers (the global pool)::

    P_A  (N, w_A)    pool of A shards          P_B  (N, w_B)    pool of B shards

Per layer (not trained, chosen at init and saved with the adapter)::

    I_A  (r * l,)    which A shard fills each slot      I_B  (r * l,)    which B shard fills each slot

Rule. Rank vector ``k`` of A is the concatenation of the shards in slots ``k*l .. k*l + l - 1``, cut at ``d_in``::

    A[k, i*w_A + j] = P_A[I_A[k*l + i], j]        (k < r, i < l, j < w_A, i*w_A + j < d_in)
    B[i*w_B + j, k] = P_B[I_B[k*l + i], j]        (B's rank vectors are its columns)

i.e. ``A = P_A[I_A].reshape(r, l * w_A)[:, :d_in]`` and ``B = P_B[I_B].reshape(r, l * w_B)[:, :d_out].T``.
Picture for r = 2, l = 3 (letters are shards of the pool)::

    I_A = [c, f, a,  e, b, d]      A = [ c | f | a ]     rank 0
                                       [ e | b | d ]     rank 1

Selection of the indices of layer ``ℓ`` (its ordinal in the group, 0..L-1) — the four "differentiation" strategies:

* **subset selection** (``subset_selection``): the first ``(r - p) * l`` slots take distinct shards drawn uniformly
  at random from the shared segment ``[0, N_s)`` (the MoE-like routing, fixed at init). Off (ablation): every layer
  takes the same shards ``0 .. (r - p) * l - 1`` (pure sharing).
* **pair dissociation** (``pair_dissociation``): ``I_B`` is drawn independently of ``I_A``. Off: ``I_B = I_A``, so
  A's and B's rank vectors stay paired as in LoRA.
* **vector sharding** (``shards_per_vector = l > 1``): each rank vector is assembled from ``l`` shards that are
  selected independently; ``l = 1`` uses whole vectors.
* **shard privatization** (``private_r = p > 0``): the last ``p * l`` slots of layer ℓ are its private shards
  ``N_s + ℓ*p*l .. N_s + (ℓ+1)*p*l - 1``, used by no other layer. ``p = 0``: none.

**Global pool** (``global_pool``): one pool per group, where a group is all adapted layers with the same attribute
name and shape (one pool per projection type in a Llama: q, k, v, o, gate, up, down). Off (ablation): every layer
is a group of its own (L = 1; no sharing across layers). With ``global_pool=False``, ``subset_selection=False``,
``l = 1``, ``p = 0`` and ``r = R`` the indices are ``0 .. r-1`` for A and B alike and MoS *is* LoRA of rank r.

Parameter count: per group ``N * (w_A + w_B) = R * L * l * (ceil(d_in / l) + ceil(d_out / l))``; when ``l``
divides both dims this is ``R * L * (d_in + d_out)`` — exactly LoRA of rank R on those L layers, while every layer
computes with rank ``r`` (the paper's ~8x saving is r = 8 R at equal quality). The index tensors add
``2 * r * l`` integers per layer to the checkpoint and nothing to the trainable count.

Initialisation (the authors' code): ``P_A`` Kaiming-uniform with a = sqrt(5) and the fan set to ``d_in`` — the
bound ``1 / sqrt(d_in)`` of a vanilla LoRA A — and ``P_B`` zeros, so the adapter starts as a no-op
(``init_weights=False``: ``P_B`` drawn with bound ``1 / sqrt(r)`` too, a non-identity adapter for tests).

Followed: the authors' code, github.com/Forence1999/MoS at commit cafb8dd8d1c37856ebefa609ebc8264072fc502b
(``modules/Tied_LoRA.py``: ``share_lora_tiedly``, ``LoraLayer_reset_lora_parameters``, ``transform_chunks``; launch
scripts of commit 612a314681b8bebfcd15840fdb324eef54de95f6). Where they leave a choice, this implementation decides:

1. Dimensions not divisible by ``l`` (the authors assert divisibility): shards are ``ceil(d / l)`` wide and the
   concatenated vector is cut at ``d`` (the tail of the last shard of each vector is unused).
2. The ablation switches the code does not have (it always selects at random, always dissociates, and has one pool
   per projection type): ``subset_selection=False`` = identical shards for every layer, ``pair_dissociation=False``
   = ``I_B = I_A``, ``global_pool=False`` = a pool per layer, as described above.
3. The layer ordinal ℓ that picks the private segment is the layer's position among the group's layers in module
   order (the authors parse the decoder-layer number out of the module name; the same in a Llama).
4. The "random scaling" vectors of the code are asserted to be ones there (and frozen), so they are left out.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class PoolShape(NamedTuple):
    """The integers that fix one group's pool and every layer's index tensors."""

    rank: int  # r
    mos_r: int  # R
    private_r: int  # p
    shards: int  # l
    layers: int  # L


def shard_width(features: int, shards: int) -> int:
    """Width of one shard when ``shards`` of them make a vector of ``features`` numbers: ``ceil(features/shards)``."""
    return -(-features // shards)


def pool_size(mos_r: int, layers: int, shards: int) -> int:
    """N = R * L * l: number of shards in one pool."""
    return mos_r * layers * shards


def shared_segment(shape: PoolShape) -> int:
    """N_s = (R - p) * L * l: the shards any layer of the group may select."""
    return (shape.mos_r - shape.private_r) * shape.layers * shape.shards


def check_pool_shape(shape: PoolShape) -> None:
    """Raise ``ValueError`` (one line, naming the values) unless the shared segment has enough shards."""
    need = (shape.rank - shape.private_r) * shape.shards
    have = shared_segment(shape)
    if need > have:
        raise ValueError(
            f"r={shape.rank} with private_r={shape.private_r} needs {need} shared shards per layer, but the pool of "
            f"mos_r={shape.mos_r} over {shape.layers} layer(s) has only (mos_r - private_r) * layers * "
            f"shards_per_vector = {have}")


def pool_params(d_in: int, d_out: int, mos_r: int, layers: int, shards: int) -> int:
    """Trainable numbers of one group's pools: ``R * L * l * (ceil(d_in / l) + ceil(d_out / l))``."""
    return pool_size(mos_r, layers, shards) * (shard_width(d_in, shards) + shard_width(d_out, shards))


def select_indices(shape: PoolShape, layer: int, subset_selection: bool = True, pair_dissociation: bool = True,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I_A, I_B)``, each ``(r * l,)`` int64, for the layer with ordinal ``layer`` in its group (rule above)."""
    check_pool_shape(shape)
    if not 0 <= layer < shape.layers:
        raise ValueError(f"layer ordinal {layer} outside 0..{shape.layers - 1}")
    n_shared, n_pick = shared_segment(shape), (shape.rank - shape.private_r) * shape.shards
    start = n_shared + layer * shape.private_r * shape.shards
    private = torch.arange(start, start + shape.private_r * shape.shards)

    def draw() -> torch.Tensor:
        if subset_selection:
            shared = torch.randperm(n_shared, generator=generator)[:n_pick]
        else:
            shared = torch.arange(n_pick)
        return torch.cat([shared, private]).long()

    index_A = draw()
    index_B = draw() if pair_dissociation else index_A.clone()
    return index_A, index_B


def assemble_A(pool_A: torch.Tensor, index_A: torch.Tensor, in_features: int, shards: int) -> torch.Tensor:
    """``A (r, d_in)`` from the pool ``P_A (N, w_A)``, ``I_A (r * l,)`` and ``l = shards``; differentiable w.r.t.
    the pool."""
    return _assemble(pool_A, index_A, in_features, shards)


def assemble_B(pool_B: torch.Tensor, index_B: torch.Tensor, out_features: int, shards: int) -> torch.Tensor:
    """``B (d_out, r)`` from the pool ``P_B (N, w_B)``, ``I_B (r * l,)`` and ``l = shards``; differentiable w.r.t.
    the pool."""
    return _assemble(pool_B, index_B, out_features, shards).t()


def _assemble(pool: torch.Tensor, index: torch.Tensor, features: int, shards: int) -> torch.Tensor:
    width = pool.shape[-1]
    if width != shard_width(features, shards):
        raise ValueError(f"pool shards are {width} wide; {shards} shards per vector over {features} features need "
                         f"ceil({features}/{shards}) = {shard_width(features, shards)}")
    if index.numel() % shards:
        raise ValueError(f"{index.numel()} index slots do not split into rank vectors of {shards} shards")
    full = pool.index_select(0, index).reshape(index.numel() // shards, shards * width)  # (r, l * w)
    return full if full.shape[1] == features else full[:, :features]


def init_pool_A_(tensor: torch.Tensor, in_features: int) -> torch.Tensor:
    """Kaiming-uniform (a = sqrt(5)) in place with fan ``d_in``: ``U(-1/sqrt(d_in), 1/sqrt(d_in))``."""
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def init_pool_B_(tensor: torch.Tensor, r: int, zero: bool = True) -> torch.Tensor:
    """In place: zeros (the adapter starts as a no-op), or with ``zero=False`` ``U(-1/sqrt(r), 1/sqrt(r))``."""
    with torch.no_grad():
        if zero:
            return tensor.zero_()
        bound = 1.0 / math.sqrt(r)
        return tensor.uniform_(-bound, bound)


def fold_grad(d_factor: torch.Tensor, index: torch.Tensor, pool_shards: int, shards: int) -> torch.Tensor:
    """The adjoint of `assemble_A`: a gradient w.r.t. ``A (r, d)`` (for B pass ``dB.T``) -> one w.r.t. the pool
    ``(N, w)``, each slot's shard summed into its pool row (index_add; repeated shards accumulate)."""
    r, features = d_factor.shape
    width = shard_width(features, shards)
    if shards * width != features:
        d_factor = torch.nn.functional.pad(d_factor, (0, shards * width - features))
    slots = d_factor.reshape(r * shards, width)
    return torch.zeros(pool_shards, width, dtype=d_factor.dtype, device=d_factor.device).index_add_(0, index, slots)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _MosDelta(torch.autograd.Function):
    """``result + (scale * drop(x) A^T) B^T`` keeping only ``x``, ``h = scale * drop(x) A^T`` and the dropped
    positions for backward — what LoRA keeps. The assembled ``A`` and ``B`` are not kept: backward assembles them
    again from the pools (a gather) and folds their gradients back onto the pools (`fold_grad`), so MoS's
    activation memory is LoRA's and its gradient memory that of the pools. (Same scheme as PRoLoRA's fused path.)
    """

    @staticmethod
    def forward(ctx, x, result, scale, p, dims, pool_A, pool_B, index_A, index_B):
        from prolora.dropout import apply_dropped, sample_dropped

        in_features, out_features, shards = dims
        A = assemble_A(pool_A, index_A, in_features, shards)
        B = assemble_B(pool_B, index_B, out_features, shards)
        dropped = sample_dropped(x.shape, p, x.device) if p > 0 else None
        scale = scale / (1 - p)
        xd = x if dropped is None else apply_dropped(x, dropped)
        h = (xd @ A.t()) * scale
        ctx.scale, ctx.dims, ctx.result_dtype = scale, dims, None if result is None else result.dtype
        ctx.autocast = (x.device.type, *_autocast_state(x.device.type))
        ctx.save_for_backward(x, h, dropped, pool_A, pool_B, index_A, index_B)
        if result is None:
            return h @ B.t()
        if result.dtype == h.dtype and (B.dtype == h.dtype or ctx.autocast[1]):
            out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), B.t())
            return out.view(*h.shape[:-1], -1)
        return result + (h @ B.t())

    @staticmethod
    def backward(ctx, dy):
        from prolora.dropout import apply_dropped, zero_dropped_

        x, h, dropped, pool_A, pool_B, index_A, index_B = ctx.saved_tensors
        in_features, out_features, shards = ctx.dims
        device_type, autocast_on, autocast_dtype = ctx.autocast
        A = assemble_A(pool_A, index_A, in_features, shards)
        B = assemble_B(pool_B, index_B, out_features, shards)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
            dh = (dy @ B) * ctx.scale  # (..., r)
            dx = dh @ A if ctx.needs_input_grad[0] else None
            dB = dy.reshape(-1, dy.shape[-1]).t() @ h.reshape(-1, h.shape[-1])  # (d_out, r); h carries the scale
            xd = x if dropped is None else apply_dropped(x, dropped)
            dA = dh.reshape(-1, dh.shape[-1]).t() @ xd.reshape(-1, x.shape[-1])  # (r, d_in)
        d_pool_A = fold_grad(dA.to(pool_A.dtype), index_A, pool_A.shape[0], shards)
        d_pool_B = fold_grad(dB.t().to(pool_B.dtype), index_B, pool_B.shape[0], shards)
        if dx is not None:
            dx = dx.to(x.dtype)
            if dropped is not None:
                zero_dropped_(dx, dropped)
        d_result = None if ctx.result_dtype is None or not ctx.needs_input_grad[1] else dy.to(ctx.result_dtype)
        return dx, d_result, None, None, None, d_pool_A, d_pool_B, None, None


def mos_delta(x: torch.Tensor, pool_A: torch.Tensor, pool_B: torch.Tensor, index_A: torch.Tensor,
              index_B: torch.Tensor, in_features: int, out_features: int, shards: int, scale: float,
              result: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """``scale * B A dropout(x)`` for ``x (..., d_in)`` -> ``(..., d_out)`` with A, B assembled from the pools (plus
    ``result``, the base output, when given). Same value and gradients as ``result + F.linear(F.linear(dropout(x),
    assemble_A(...)) * scale, assemble_B(...))``, with LoRA's activation memory."""
    return _MosDelta.apply(x, result, scale, dropout, (in_features, out_features, shards), pool_A, pool_B, index_A,
                           index_B)
