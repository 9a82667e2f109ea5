"""Reference (shifted) window attention in 3D, as MONAI's Swin UNETR computes it.

MONAI ``monai/networks/nets/swin_unetr.py`` (``SwinTransformerBlock.forward_part1`` after
``norm1``, ``WindowAttention.forward``, ``compute_mask``, ``get_window_size``), step by step:

1. ``get_window_size``: on every axis whose size is ``<=`` the window, the window becomes the
   size and the shift 0.
2. Pad each axis at its end to a multiple of the (effective) window. MONAI pads the *features*
   with zeros before the qkv projection, so a padded token's key and value equal the qkv
   bias. This op works on projected q, k, v, so the padded keys/values are given as
   ``pad_kv`` = (2, heads, head_dim) (the bias slices; zeros by default) and padded queries
   are dropped. ``mask_padded=True`` masks padded keys out instead.
3. ``torch.roll`` by ``-shift`` (only when some shift is > 0), then ``window_partition``
   (windows ordered batch, d, h, w; tokens inside a window d, h, w).
4. Per window and head: ``softmax(q k^T * scale + B_rel + M_shift) v`` with
   ``scale = head_dim ** -0.5``; ``B_rel = table[relative_position_index[:n, :n]]`` where the
   index is built for the *configured* window (Swin/MONAI slice it to the effective ``n``
   tokens when the window was clamped); ``M_shift`` is ``compute_mask``: tokens of different
   shift regions get ``mask_value`` (-100 in MONAI; -inf selectable), applied only when some
   shift is > 0.
5. ``window_reverse``, roll back by ``+shift``, crop the padding.

Tensors are (B, D, H, W, heads, head_dim) views of the projected q, k, v (channels-last,
C = heads * head_dim). ``upcast=True`` computes in float64. The backward
:func:`window_attention3d_bwd_ref` is written out without autograd (it runs inside a custom op).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import torch

IntOr3 = Union[int, Sequence[int]]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _triple(name: str, v: IntOr3, minimum: Optional[int] = None) -> Tuple[int, int, int]:
    """``v`` (an int, or 3 ints for d, h, w) as a tuple of 3 Python ints, each >= ``minimum`` when
    given. Anything else (a float such as 2.0, a bool, a string, another length) is refused with
    an error naming ``name``, what was expected and what came: TypeError for a wrong type,
    ValueError for a wrong length or value."""
    want = f"{name} must be an int or 3 ints (d, h, w)"
    if _is_int(v):
        t = (int(v),) * 3
    elif isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise TypeError(f"{want}, got {type(v).__name__} {v!r}")
    else:
        items = tuple(v)
        if len(items) != 3:
            raise ValueError(f"{want}, got {len(items)} values {v!r}")
        for axis, i in zip("dhw", items):
            if not _is_int(i):
                raise TypeError(f"{want}, got {type(i).__name__} {i!r} for {axis} in {v!r}")
        t = tuple(int(i) for i in items)
    if minimum is not None and min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on every axis (d, h, w), got {t}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class WindowGeometry:
    """Sizes of one windowed-attention call after MONAI's clamp and padding."""

    size: Tuple[int, int, int]  # D, H, W of the volume
    window: Tuple[int, int, int]  # configured window: defines the bias table and its index
    eff_window: Tuple[int, int, int]  # window after the clamp (window = size where size <= window)
    shift: Tuple[int, int, int]  # shift after the clamp (0 where clamped)
    padded: Tuple[int, int, int]  # size rounded up to a multiple of eff_window

    @property
    def n_windows(self) -> Tuple[int, int, int]:
        return tuple(p // w for p, w in zip(self.padded, self.eff_window))  # type: ignore[return-value]

    @property
    def num_windows(self) -> int:
        return math.prod(self.n_windows)

    @property
    def tokens(self) -> int:
        """Tokens per window, N."""
        return math.prod(self.eff_window)

    @property
    def table_rows(self) -> int:
        wd, wh, ww = self.window
        return (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift)

    @property
    def has_padding(self) -> bool:
        return self.padded != self.size


def window_geometry(size: Sequence[int], window: IntOr3, shift: IntOr3 = 0, clamp: bool = True) -> WindowGeometry:
    """MONAI's ``get_window_size`` followed by the end padding of ``forward_part1``.

    ``clamp=False`` skips ``get_window_size``: the configured window and shift hold on every
    axis, and an axis shorter than the window is padded up to one window (the Swin Transformer
    code SwinCross is built on, whose 3^3 last stage still rolls and masks its one window)."""
    size = tuple(int(s) for s in size)
    window = _triple("window", window, minimum=1)
    shift = _triple("shift", shift)
    for a in range(3):
        if not 0 <= shift[a] < window[a]:
            raise ValueError(f"shift must be in [0, window) on every axis, got shift {shift} for window {window}")
    eff = list(window)
    sh = list(shift)
    for a in range(3):
        if clamp and size[a] <= window[a]:
            eff[a] = size[a]
            sh[a] = 0
    padded = tuple(-(-s // w) * w for s, w in zip(size, eff))
    return WindowGeometry(size, window, tuple(eff), tuple(sh), padded)  # type: ignore[arg-type]


@lru_cache(maxsize=64)
def _relative_position_index_cpu(window: Tuple[int, int, int]) -> torch.Tensor:
    wd, wh, ww = window
    # on the CPU whatever the default device (a model built under torch.device("meta") must not
    # leave a meta tensor in the cache)
    cpu = torch.device("cpu")
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=cpu) for w in window), indexing="ij"))
    flat = coords.flatten(1)  # 3, N
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # N, N, 3 (query i minus key j)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1], device=cpu)
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def relative_position_index(window: IntOr3, tokens: Optional[int] = None) -> torch.Tensor:
    """Swin's (N, N) index into the bias table for the configured ``window``; ``tokens`` slices
    it to ``[:n, :n]`` as MONAI does for a clamped window."""
    idx = _relative_position_index_cpu(_triple("window", window))
    n = idx.shape[0] if tokens is None else tokens
    return idx[:n, :n]


@lru_cache(maxsize=64)
def _table_gather_cpu(window: Tuple[int, int, int], tokens: int) -> torch.Tensor:
    """(rows, max pairs) indices into the flattened (N*N + 1) pair axis, padded with N*N (a zero
    slot): row r lists, in increasing order, the (i, j) pairs whose bias is table row r."""
    idx = relative_position_index(window, tokens).reshape(-1)
    rows = math.prod(2 * w - 1 for w in window)
    order = torch.argsort(idx, stable=True)
    counts = torch.bincount(idx, minlength=rows)
    start = torch.cumsum(counts, 0) - counts
    width = max(int(counts.max()), 1)
    out = torch.full((rows, width), idx.numel(), dtype=torch.long, device=idx.device)
    slot = torch.arange(idx.numel(), device=idx.device) - start[idx[order]]
    out[idx[order], slot] = order
    return out


@lru_cache(maxsize=64)
def _table_slot_cpu(window: Tuple[int, int, int], tokens: int, heads: int) -> torch.Tensor:
    """(heads * N * N,) flat (row, head) slot of every (head, i, j) pair: one bincount for all heads."""
    idx = relative_position_index(window, tokens).reshape(1, -1)
    return (idx * heads + torch.arange(heads, device=idx.device)[:, None]).reshape(-1)


def bias_table_grad(pair_grad: torch.Tensor, window: IntOr3, tokens: int) -> torch.Tensor:
    """Table gradient from the per-pair gradient ``pair_grad`` (heads, N, N), in a fixed order
    (gather, then sum): the same bits on every run, on CPU and GPU. Returns (rows, heads)."""
    heads = pair_grad.shape[0]
    if pair_grad.device.type == "cpu":  # bincount on CPU adds in index order: deterministic
        rows = math.prod(2 * w - 1 for w in _triple("window", window))
        idx = _table_slot_cpu(_triple("window", window), tokens, heads)
        out = torch.bincount(idx, weights=pair_grad.reshape(-1), minlength=rows * heads)
        return out.view(rows, heads).to(pair_grad.dtype)
    gather = _table_gather_cpu(_triple("window", window), tokens).to(pair_grad.device)
    flat = torch.cat([pair_grad.reshape(heads, -1), pair_grad.new_zeros(heads, 1)], dim=1)
    return flat[:, gather].sum(-1).t().contiguous()


def shift_region_mask(geom: WindowGeometry, mask_value: float = -100.0, device=None) -> Optional[torch.Tensor]:
    """MONAI's ``compute_mask``: (num_windows, N, N) with ``mask_value`` between tokens of different
    shift regions and 0 elsewhere; ``None`` when no axis is shifted (MONAI passes no mask)."""
    if not geom.shifted:
        return None
    img = torch.zeros(geom.padded, device=device)
    w, s = geom.eff_window, geom.shift
    cnt = 0
    # the three slices per axis of compute_mask; with shift 0 the last slice covers the axis
    for d in (slice(-w[0]), slice(-w[0], -s[0]), slice(-s[0], None)):
        for h in (slice(-w[1]), slice(-w[1], -s[1]), slice(-s[1], None)):
            for ww in (slice(-w[2]), slice(-w[2], -s[2]), slice(-s[2], None)):
                img[d, h, ww] = cnt
                cnt += 1
    win = window_partition(img[None, ..., None], geom.eff_window)[..., 0]  # nW, N
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, mask_value), torch.zeros_like(diff))


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, *rest) with D, H, W multiples of ``window`` -> (B * nW, N, *rest), windows
    ordered (b, d, h, w) and tokens inside a window (d, h, w), as MONAI's ``window_partition``."""
    b, d, h, w = x.shape[:4]
    rest = x.shape[4:]
    wd, wh, ww = window
    x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, *rest)
    perm = (0, 1, 3, 5, 2, 4, 6) + tuple(range(7, 7 + len(rest)))
    return x.permute(perm).reshape(-1, wd * wh * ww, *rest)


def window_reverse(windows: torch.Tensor, window: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, N, *rest) -> (B, D, H, W, *rest)."""
    b, d, h, w = dims
    wd, wh, ww = window
    rest = windows.shape[2:]
    x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, *rest)
    perm = (0, 1, 4, 2, 5, 3, 6) + tuple(range(7, 7 + len(rest)))
    return x.permute(perm).reshape(b, d, h, w, *rest)


def _to_windows(x: torch.Tensor, geom: WindowGeometry, fill: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, D, H, W, heads, e) -> (B * nW, heads, N, e): pad at the end with ``fill`` (heads, e)
    (zeros when None), roll by -shift, partition."""
    b = x.shape[0]
    rest = x.shape[4:]
    if geom.has_padding:
        full = x.new_zeros((b, *geom.padded, *rest))
        if fill is not None:
            full[:] = fill.to(x.dtype)
        full[:, : geom.size[0], : geom.size[1], : geom.size[2]] = x
        x = full
    if geom.shifted:
        x = torch.roll(x, shifts=tuple(-s for s in geom.shift), dims=(1, 2, 3))
    return window_partition(x, geom.eff_window).transpose(1, 2)


def _from_windows(xw: torch.Tensor, geom: WindowGeometry, batch: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows` without the crop: -> (B, Dp, Hp, Wp, heads, e)."""
    x = window_reverse(xw.transpose(1, 2), geom.eff_window, (batch, *geom.padded))
    if geom.shifted:
        x = torch.roll(x, shifts=geom.shift, dims=(1, 2, 3))
    return x


def _crop(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    return x[:, : geom.size[0], : geom.size[1], : geom.size[2]]


def _valid_windows(geom: WindowGeometry, device) -> torch.Tensor:
    """(nW, N) bool: True for tokens of the volume, False for padding."""
    valid = torch.zeros(geom.padded, dtype=torch.bool, device=device)
    valid[: geom.size[0], : geom.size[1], : geom.size[2]] = True
    if geom.shifted:
        valid = torch.roll(valid, shifts=tuple(-s for s in geom.shift), dims=(0, 1, 2))
    return window_partition(valid[None], geom.eff_window)


def _logits_bias(
    geom: WindowGeometry,
    heads: int,
    rel_bias_table: Optional[torch.Tensor],
    mask_value: float,
    mask_padded: bool,
    dtype: torch.dtype,
    device,
) -> torch.Tensor:
    """Everything added to q k^T * scale, as (1 or nW, heads or 1, N, N)."""
    n = geom.tokens
    add = torch.zeros((1, 1, n, n), dtype=dtype, device=device)
    if rel_bias_table is not None:
        idx = relative_position_index(geom.window, n).to(device)
        add = add + rel_bias_table.to(dtype)[idx.reshape(-1)].reshape(n, n, heads).permute(2, 0, 1)[None]
    mask = shift_region_mask(geom, mask_value, device)
    if mask is not None:
        add = add + mask.to(dtype)[:, None]
    if mask_padded and geom.has_padding:
        keep = _valid_windows(geom, device)[:, None, None, :]  # nW, 1, 1, N (keys)
        add = torch.where(keep, add, torch.full_like(add, float("-inf")))
    return add


def _prepare(q, k, v, window, shift, rel_bias_table, pad_kv, scale, upcast, clamp_window=True):
    geom = window_geometry(q.shape[1:4], window, shift, clamp_window)
    # fp16/bf16 run in fp32 (fp16 logits overflow to NaN where every other backend is finite):
    # the oracle is the most careful backend; outputs are cast back at the end
    dtype = torch.float64 if upcast else (torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype)
    heads, e = q.shape[4], q.shape[5]
    scale = e**-0.5 if scale is None else scale
    q, k, v = (t.to(dtype) for t in (q, k, v))
    table = rel_bias_table.to(dtype) if rel_bias_table is not None else None
    pk = pad_kv[0].to(dtype) if pad_kv is not None else None
    pv = pad_kv[1].to(dtype) if pad_kv is not None else None
    return geom, dtype, heads, scale, q, k, v, table, pk, pv


def _probabilities(geom, qw, kw, heads, scale, table, mask_value, mask_padded, batch):
    n = geom.tokens
    logits = (qw * scale) @ kw.transpose(-2, -1)  # B*nW, heads, N, N
    add = _logits_bias(geom, heads, table, mask_value, mask_padded, qw.dtype, qw.device)
    logits = (logits.reshape(batch, -1, heads, n, n) + add[None]).reshape(-1, heads, n, n)
    # with -inf masks a padded query (dropped later) may see no key at all: give its row zeros
    # instead of NaNs, which would leak into the gradients of the keys it shares a window with
    dead = torch.isneginf(logits.amax(-1, keepdim=True))
    logits = torch.where(dead, torch.zeros_like(logits), logits)
    return torch.softmax(logits, dim=-1)


def window_attention3d_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: IntOr3,
    shift: IntOr3 = 0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    upcast: bool = False,
    clamp_window: bool = True,
) -> torch.Tensor:
    """Shifted-window attention, MONAI's code path. q, k, v: (B, D, H, W, heads, head_dim);
    rel_bias_table: ((2wd-1)(2wh-1)(2ww-1), heads) for the configured window; pad_kv:
    (2, heads, head_dim) key/value of padded tokens; ``clamp_window=False``: no
    ``get_window_size`` (see :func:`window_geometry`). Returns (B, D, H, W, heads, head_dim)."""
    out_dtype = q.dtype
    geom, _, heads, scale, q, k, v, table, pk, pv = _prepare(
        q, k, v, window, shift, rel_bias_table, pad_kv, scale, upcast, clamp_window
    )
    b = q.shape[0]
    qw = _to_windows(q, geom, None)
    kw = _to_windows(k, geom, pk)
    vw = _to_windows(v, geom, pv)
    p = _probabilities(geom, qw, kw, heads, scale, table, mask_value, mask_padded, b)
    out = _crop(_from_windows(p @ vw, geom, b), geom)
    return out.to(out_dtype)


def window_attention3d_bwd_ref(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: IntOr3,
    shift: IntOr3 = 0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    upcast: bool = False,
    clamp_window: bool = True,
):
    """Gradients of :func:`window_attention3d_ref` by the explicit softmax-attention formulas
    (no autograd): returns (dq, dk, dv, d_table (rows, heads), d_pad_kv (2, heads, head_dim)),
    d_table/d_pad_kv in the compute dtype; d_table is None without a table."""
    geom, dtype, heads, scale, q, k, v, table, pk, pv = _prepare(
        q, k, v, window, shift, rel_bias_table, pad_kv, scale, upcast, clamp_window
    )
    b = q.shape[0]
    n = geom.tokens
    qw = _to_windows(q, geom, None)
    kw = _to_windows(k, geom, pk)
    vw = _to_windows(v, geom, pv)
    p = _probabilities(geom, qw, kw, heads, scale, table, mask_value, mask_padded, b)
    gw = _to_windows(grad_out.to(dtype), geom, None)  # padded queries get no gradient
    dv = p.transpose(-2, -1) @ gw
    dp = gw @ vw.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = (ds @ kw) * scale
    dk = (ds.transpose(-2, -1) @ qw) * scale
    d_table = None
    if table is not None:
        d_table = bias_table_grad(ds.reshape(-1, heads, n, n).sum(0), geom.window, n)
    dk_full = _from_windows(dk, geom, b)
    dv_full = _from_windows(dv, geom, b)
    pad = torch.ones(geom.padded, dtype=torch.bool, device=q.device)
    pad[: geom.size[0], : geom.size[1], : geom.size[2]] = False
    d_pad = torch.stack([dk_full[:, pad].sum((0, 1)), dv_full[:, pad].sum((0, 1))])
    grads = [_crop(_from_windows(dq, geom, b), geom), _crop(dk_full, geom), _crop(dv_full, geom)]
    grads = [g.to(grad_out.dtype) for g in grads]
    return (*grads, d_table, d_pad)


def cross_window_attention3d_ref(
    q_a: torch.Tensor,
    k_a: torch.Tensor,
    v_a: torch.Tensor,
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    window: IntOr3,
    shift: IntOr3 = 0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    upcast: bool = False,
    clamp_window: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SwinCross's cross-modal attention: out_a = attn(q_a, k_b, v_b), out_b = attn(q_b, k_a, v_a),
    one shared bias table (and shared qkv projection, hence one ``pad_kv``)."""
    opts = dict(
        window=window, shift=shift, rel_bias_table=rel_bias_table, mask_value=mask_value, scale=scale,
        pad_kv=pad_kv, mask_padded=mask_padded, upcast=upcast, clamp_window=clamp_window,
    )
    return window_attention3d_ref(q_a, k_b, v_b, **opts), window_attention3d_ref(q_b, k_a, v_a, **opts)


def partition_windows(x: torch.Tensor, geom: WindowGeometry, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The copies MONAI's path makes before attention: (B, D, H, W, heads, e) -> (B * nW, heads,
    N, e), padded at the end with ``fill`` (heads, e) (zeros when None), rolled by -shift and
    partitioned (for peers such as SDPA on pre-partitioned windows)."""
    return _to_windows(x, geom, fill)


def merge_windows(xw: torch.Tensor, geom: WindowGeometry, batch: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: reverse partition, roll back, crop."""
    return _crop(_from_windows(xw, geom, batch), geom)


def window_logits_bias(geom: WindowGeometry, heads: int, rel_bias_table: Optional[torch.Tensor],
                       mask_value: float = -100.0, mask_padded: bool = False, dtype=None,
                       device=None) -> torch.Tensor:
    """Bias gather + shift mask (+ padding mask) added to q k^T * scale: (1 or nW, heads or 1, N, N)."""
    dtype = dtype or (rel_bias_table.dtype if rel_bias_table is not None else torch.float32)
    return _logits_bias(geom, heads, rel_bias_table, mask_value, mask_padded, dtype, device)
