"""(Shifted) 3D window attention: ours per backend vs the eager MONAI path (pad, roll, partition,
full softmax attention, reverse) and F.scaled_dot_product_attention on pre-partitioned windows
(the partition copies, bias gather and mask included), torch.compile of the reference on GPU.

Swin UNETR stages (feature 48, window 7^3, heads 3/6/12/24, head_dim 16), shifted blocks:
48 ch at 24^3 tokens, 96 at 12^3, 192 at 6^3 (window clamped to 6), 384 at 3^3 (clamped to 3);
on GPU also 48 ch at 48^3 (96^3 input, patch 2). Inputs are the projected q, k, v as views of
one (B, D, H, W, 3, heads, head_dim) qkv tensor, as the modules pass them.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from medkernels.bench import Case
from medkernels.nn import SwinBlock3d
from medkernels.ops import window_attention3d
from medkernels.ops.window_attention import window_attention3d_backend
from medkernels.reference.window_attention import (
    merge_windows,
    partition_windows,
    window_attention3d_ref,
    window_geometry,
    window_logits_bias,
)
from medkernels.testing import rel_err

SWIN_UNETR_STAGES = [(48, 3, 24), (96, 6, 12), (192, 12, 6), (384, 24, 3)]  # (channels, heads, tokens per axis)
WINDOW, SHIFT = 7, 3


def _sdpa_partitioned(q, k, v, geom, table, pad_kv, scale):
    """The strongest plain-PyTorch peer: partition copies, one SDPA call over all windows with
    bias + shift mask as a float mask, reverse copies."""
    b, heads = q.shape[0], q.shape[4]
    qw = partition_windows(q, geom)
    kw = partition_windows(k, geom, pad_kv[0])
    vw = partition_windows(v, geom, pad_kv[1])
    mask = window_logits_bias(geom, heads, table, dtype=q.dtype, device=q.device)  # (nW or 1, heads, N, N)
    n = geom.tokens
    mask = mask.expand(geom.num_windows, heads, n, n)
    if b > 1:
        mask = mask.repeat(b, 1, 1, 1)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    return merge_windows(out, geom, b)


def _flex_partitioned(compiled_flex, q, k, v, geom, table, pad_kv, scale):
    """FlexAttention (GPU, compiled) on the partitioned windows: the bias table gathered into a
    (heads, N, N) score_mod buffer, the shift mask as a (nW, N, N) one; partition copies included."""
    b, heads = q.shape[0], q.shape[4]
    n, nw = geom.tokens, geom.num_windows
    qw = partition_windows(q, geom)
    kw = partition_windows(k, geom, pad_kv[0])
    vw = partition_windows(v, geom, pad_kv[1])
    add = window_logits_bias(geom, heads, table, dtype=torch.float32, device=q.device)  # (nW or 1, heads, N, N)
    add = add.expand(nw, heads, n, n).contiguous()

    def score_mod(score, bi, h, qi, ki):
        return score + add[bi % nw, h, qi, ki]

    out = compiled_flex(qw, kw, vw, score_mod=score_mod, scale=scale)
    return merge_windows(out, geom, b)


def _case(batch, channels, heads, tokens, dtype, device, backward=False, note=""):
    torch.manual_seed(0)
    size = (tokens,) * 3
    e = channels // heads
    geom = window_geometry(size, WINDOW, SHIFT)
    qkv = torch.randn(batch, *size, 3, heads, e, device=device, dtype=dtype)
    table = (0.02 * torch.randn(geom.table_rows, heads, device=device)).to(dtype)
    pad_kv = torch.randn(2, heads, e, device=device, dtype=dtype)
    scale = e**-0.5
    opts = dict(window=WINDOW, shift=SHIFT, rel_bias_table=table, pad_kv=pad_kv, scale=scale)
    n = geom.tokens
    elem = qkv.element_size()
    numel = qkv.numel() // 3
    flops = 4 * batch * geom.num_windows * heads * n * n * e
    nbytes = 4 * numel * elem
    if backward:
        flops = int(flops * 3.5)  # forward + backward (2.5x: dS, dq, dk, dv)
        nbytes = 8 * numel * elem  # read q, k, v, out, dout; write dq, dk, dv
        leaf = qkv.detach().requires_grad_(True)
        tleaf = table.detach().requires_grad_(True)
        g = torch.randn(batch, *size, heads, e, device=device, dtype=dtype)

        def grads_of(fn):
            def run():
                q, k, v = leaf.unbind(4)
                out = fn(q, k, v, tleaf)
                torch.autograd.grad(out, (leaf, tleaf), g)
            return run

        def ours(backend):
            return grads_of(lambda q, k, v, t: window_attention3d(q, k, v, **{**opts, "rel_bias_table": t},
                                                                  backend=backend))
        ref = grads_of(lambda q, k, v, t: window_attention3d_ref(q, k, v, **{**opts, "rel_bias_table": t}))
        sdpa = grads_of(lambda q, k, v, t: _sdpa_partitioned(q, k, v, geom, t, pad_kv, scale))
    else:
        q, k, v = qkv.unbind(4)

        def ours(backend):
            def run():
                with torch.no_grad():
                    return window_attention3d(q, k, v, **opts, backend=backend)
            return run

        def ref():
            with torch.no_grad():
                return window_attention3d_ref(q, k, v, **opts)

        def sdpa():
            with torch.no_grad():
                return _sdpa_partitioned(q, k, v, geom, table, pad_kv, scale)

    providers = {"reference": ref}
    q0 = qkv[..., 0, :, :]
    for b in (["cpu"] if device.type == "cpu" else ["triton"]):
        try:
            window_attention3d_backend(q0, backend=b)
            providers[b] = ours(b)
        except RuntimeError:
            pass
    providers[f"auto({window_attention3d_backend(q0)})"] = ours("auto")
    providers["sdpa-partitioned"] = sdpa
    if device.type == "cuda":
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention)
            if backward:
                providers["flex-attention"] = grads_of(
                    lambda q, k, v, t: _flex_partitioned(flex, q, k, v, geom, t, pad_kv, scale))
            else:
                def flex_run():
                    with torch.no_grad():
                        return _flex_partitioned(flex, q, k, v, geom, table, pad_kv, scale)
                providers["flex-attention"] = flex_run
        except ImportError:  # torch < 2.5
            pass
    if device.type == "cuda" and not backward:
        compiled = torch.compile(window_attention3d_ref)
        qc, kc, vc = qkv.unbind(4)

        def comp():
            with torch.no_grad():
                return compiled(qc, kc, vc, **opts)
        providers["torch.compile"] = comp

    def check():
        with torch.no_grad():
            q, k, v = qkv.unbind(4)
            y64 = window_attention3d_ref(q, k, v, **opts, upcast=True)
            errs = {"reference": rel_err(window_attention3d_ref(q, k, v, **opts), y64),
                    "sdpa-partitioned": rel_err(_sdpa_partitioned(q, k, v, geom, table, pad_kv, scale), y64)}
            for name in providers:
                if name in ("cpu", "triton"):
                    errs[name] = rel_err(window_attention3d(q, k, v, **opts, backend=name), y64)
            return errs

    shape = f"{batch}x{tokens}^3x{channels}ch h{heads} w{WINDOW} s{SHIFT} (N={n}, {geom.num_windows} windows)"
    return Case(op="window_attention3d" + (" fwd+bwd" if backward else " fwd"), shape=shape, dtype=dtype,
                providers=providers, bytes=nbytes, flops=flops, check=None if backward else check, note=note)


def _block_case(batch, channels, heads, tokens, dtype, device, backward=False):
    """The whole Swin block (norm, shifted-window attention with projections, MLP) against MONAI's
    own SwinTransformerBlock, eager and with its SDPA path (use_flash_attention), when installed."""
    try:
        swin = importlib.import_module("monai.networks.nets.swin_unetr")
    except ImportError:
        return None
    torch.manual_seed(0)
    size = (tokens,) * 3
    win, sh = (WINDOW,) * 3, (SHIFT,) * 3
    monai_eager = swin.SwinTransformerBlock(channels, heads, win, sh).to(device, dtype)
    blocks = {"monai": monai_eager}
    try:
        blocks["monai-sdpa"] = swin.SwinTransformerBlock(channels, heads, win, sh, use_flash_attention=True)
        blocks["monai-sdpa"].load_state_dict(monai_eager.state_dict())
        blocks["monai-sdpa"].to(device, dtype)
    except TypeError:  # an older MONAI without use_flash_attention
        pass
    backends = ["cpu"] if device.type == "cpu" else ["triton"]
    for b in backends:
        blk = SwinBlock3d(channels, heads, win, sh, backend=b).to(device, dtype)
        blk.load_state_dict(monai_eager.state_dict())
        blocks[b] = blk
    ws, ss = swin.get_window_size(size, win, sh)
    mask = swin.compute_mask([-(-s // w) * w for s, w in zip(size, ws)], ws, ss, device).to(dtype)
    x = torch.randn(batch, *size, channels, device=device, dtype=dtype, requires_grad=backward)
    g = torch.randn_like(x)

    def provider(name, blk):
        call = (lambda: blk(x, mask)) if name.startswith("monai") else (lambda: blk(x))
        if backward:
            return lambda: torch.autograd.grad(call(), [x, *blk.parameters()], g)

        def run():
            with torch.no_grad():
                return call()
        return run

    providers = {name: provider(name, blk) for name, blk in blocks.items()}
    shape = f"{batch}x{tokens}^3x{channels}ch h{heads} w{WINDOW} s{SHIFT}"
    return Case(op="SwinBlock3d" + (" fwd+bwd" if backward else " fwd"), shape=shape, dtype=dtype,
                providers=providers, baseline="monai", note="whole block vs MONAI SwinTransformerBlock")


def cases(device: torch.device, full: bool):
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cpu":
        for c, h, t in SWIN_UNETR_STAGES:
            yield _case(1, c, h, t, f32, device, note="Swin UNETR stage; issue target: CPU >= 2x reference")
        yield _case(1, 96, 6, 12, f32, device, backward=True, note="Swin UNETR stage 2")
        yield _case(1, 192, 12, 6, f32, device, backward=True, note="Swin UNETR stage 3")
        yield _case(1, 384, 24, 3, f32, device, backward=True, note="Swin UNETR stage 4")
        for backward in (False, True):
            case = _block_case(1, 96, 6, 12, f32, device, backward=backward)
            if case is not None:
                yield case
        if full:
            yield _case(1, 48, 3, 24, f32, device, backward=True, note="Swin UNETR stage 1")
            yield _case(2, 48, 3, 24, f32, device, note="Swin UNETR stage 1, batch 2")
            yield _case(1, 96, 6, 12, bf16, device)
        return
    stages = [(48, 3, 48)] + SWIN_UNETR_STAGES
    for dtype in (bf16, f32):
        for batch in (2,) if not full else (1, 2, 4):
            for c, h, t in stages:
                yield _case(batch, c, h, t, dtype, device, note="Swin UNETR stage; target >= 2x ref, >= 1.3x SDPA")
                yield _case(batch, c, h, t, dtype, device, backward=True, note="Swin UNETR stage")
                for backward in (False, True):
                    case = _block_case(batch, c, h, t, dtype, device, backward=backward)
                    if case is not None:
                        yield case
