"""Decomposed 3D convolution: ours per backend vs the eager DCFormer block (3 Conv3d + 3 BN +
sum + act), torch.compile of it, in one run. DCFormer's real shapes first.

DCFormer-small at input 128x256x256: the stride-4 stem gives 32x64x64, then stages of
96/192/384/768 channels at 16x32x32 / 8x16x16 / 4x8x8 / 2x4x4 with kernels 13/11/9/7.
"""

from __future__ import annotations

import torch

from medkernels.bench import Case
from medkernels.ops import decomp_conv3d
from medkernels.ops.decomp_conv import decomp_conv3d_backend
from medkernels.reference.decomp_conv import decomp_conv3d_module_ref, decomp_conv3d_ref
from medkernels.testing import rel_err

DCFORMER_SMALL_STAGES = [(96, (16, 32, 32), 13), (192, (8, 16, 16), 11), (384, (4, 8, 8), 9), (768, (2, 4, 4), 7)]


def _eager_block(c_in, c_out, k, stride, groups, device, dtype):
    """DCFormer's DecompConv3D in eval mode, as plain PyTorch layers, and its folded weights."""
    convs, norms = [], []
    for axis in range(3):
        ks = [1, 1, 1]
        ks[axis] = k
        pad = [0, 0, 0]
        pad[axis] = k // 2
        convs.append(torch.nn.Conv3d(c_in, c_out, ks, stride, pad, groups=groups))
        bn = torch.nn.BatchNorm3d(c_out)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        norms.append(bn)
    mods = torch.nn.ModuleList(convs + norms).to(device=device, dtype=dtype).eval()
    ws, bias = [], 0
    for c, n in zip(convs, norms):
        s = n.weight / torch.sqrt(n.running_var + n.eps)
        ws.append((c.weight.reshape(c_out, c_in // groups, k) * s[:, None, None]).detach().contiguous())
        bias = bias + (c.bias - n.running_mean) * s + n.bias
    return mods, convs, norms, ws, bias.detach().contiguous()


def _case(n, c_in, c_out, size, k, stride, groups, act, dtype, device, channels_last=False, backward=False,
          note=""):
    torch.manual_seed(0)
    x = torch.randn(n, c_in, *size, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    mods, convs, norms, ws, bias = _eager_block(c_in, c_out, k, stride, groups, device, dtype)
    out_sz = [(s - 1) // stride + 1 for s in size]
    out_numel = n * c_out * out_sz[0] * out_sz[1] * out_sz[2]
    elem = x.element_size()
    flops = 2 * 3 * k * (c_in // groups) * out_numel
    nbytes = (x.numel() + out_numel) * elem
    if backward:
        flops *= 3  # dx, dw and the recomputed forward
        nbytes = (2 * x.numel() + 2 * out_numel) * elem  # read x, dy; write dx; gz round trip if act
        x.requires_grad_(True)
        ws = [w.detach().requires_grad_(True) for w in ws]
        bias = bias.detach().requires_grad_(True)
        gy = torch.randn(n, c_out, *out_sz, device=device, dtype=dtype)

        def ours(backend):
            return lambda: decomp_conv3d(x, *ws, bias, stride, groups, act, backend=backend).backward(gy)

        def ref():
            decomp_conv3d_ref(x, *ws, bias, stride, groups, act).backward(gy)
    else:
        def ours(backend):
            def run():
                with torch.no_grad():
                    return decomp_conv3d(x, *ws, bias, stride, groups, act, backend=backend)
            return run

        def ref():
            with torch.no_grad():
                return decomp_conv3d_module_ref(x, convs, norms, act)

    providers = {"reference": ref}
    backends = ["cpu"] if device.type == "cpu" else ["triton", "cuda"]
    for b in backends:
        try:
            decomp_conv3d_backend(x, k, groups, stride, backend=b, c_out=c_out, grad=backward)
            providers[b] = ours(b)
        except RuntimeError:
            pass
    auto = decomp_conv3d_backend(x, k, groups, stride, c_out=c_out, grad=backward)
    providers[f"auto({auto})"] = ours("auto")
    if device.type == "cuda" and not backward:
        compiled = torch.compile(decomp_conv3d_module_ref)

        def comp():
            with torch.no_grad():
                return compiled(x, convs, norms, act)
        providers["torch.compile"] = comp

    def check():
        with torch.no_grad():
            w64 = [w.detach().double() for w in ws]
            y64 = decomp_conv3d_ref(x.detach().double(), *w64, bias.detach().double(), stride, groups, act)
            errs = {}
            for name in providers:
                if name.startswith("auto") or name in ("reference", "torch.compile") or backward:
                    continue
                y = decomp_conv3d(x.detach(), *[w.detach() for w in ws], bias.detach(), stride, groups, act,
                                  backend=name)
                errs[name] = rel_err(y, y64)
            errs["reference"] = rel_err(decomp_conv3d_module_ref(x.detach(), convs, norms, act), y64)
            return errs

    layout = "NDHWC" if channels_last else "NCDHW"
    kind = "dw" if groups == c_in == c_out else groups
    shape = f"{n}x{c_in}x{'x'.join(map(str, size))}->{c_out} k{k} s{stride} g{kind} {layout}"
    return Case(op="decomp_conv3d" + (" fwd+bwd" if backward else " fwd"), shape=shape, dtype=dtype,
                providers=providers, bytes=nbytes, flops=flops, check=check, note=note)


def cases(device: torch.device, full: bool):
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cpu":
        yield _case(1, 96, 96, (32, 32, 32), 13, 1, 96, None, f32, device, note="issue target: >=10x reference")
        yield _case(1, 96, 96, (32, 32, 32), 13, 1, 96, None, f32, device, channels_last=True)
        for batch in (1, 2):
            for c, size, k in DCFORMER_SMALL_STAGES:
                yield _case(batch, c, c, size, k, 1, c, None, f32, device, note="DCFormer-small stage")
        yield _case(1, 1, 64, (32, 64, 64), 7, 4, 1, None, f32, device, note="DCFormer stem, groups=1, stride 4")
        yield _case(1, 64, 64, (32, 32, 16), 3, 1, 1, None, f32, device, channels_last=True,
                    note="DCFormer stem k=3, groups=1 (model at 64x128x128)")
        yield _case(1, 96, 96, (16, 32, 32), 13, 1, 96, "gelu", bf16, device)
        yield _case(1, 96, 96, (16, 32, 32), 13, 1, 96, None, f32, device, backward=True)
        if full:
            for c, size, k in DCFORMER_SMALL_STAGES[:2]:
                yield _case(2, c, c, tuple(2 * s for s in size), k, 1, c, None, f32, device)
            yield _case(1, 1, 64, (128, 256, 256), 7, 4, 1, None, f32, device, note="stem at full input")
        return
    for dtype in (bf16, f32):
        for batch in (1, 2, 8):
            for c, size, k in DCFORMER_SMALL_STAGES:
                yield _case(batch, c, c, size, k, 1, c, None, dtype, device, note="DCFormer-small stage")
        yield _case(2, 96, 96, (16, 32, 32), 13, 1, 96, None, dtype, device, channels_last=True)
        yield _case(8, 96, 96, (16, 32, 32), 13, 1, 96, None, dtype, device, backward=True)
        yield _case(8, 192, 192, (8, 16, 16), 11, 1, 192, None, dtype, device, backward=True)
    yield _case(1, 1, 64, (128, 256, 256), 7, 4, 1, None, bf16, device, note="DCFormer stem, groups=1, stride 4")
    yield _case(1, 64, 64, (32, 64, 64), 3, 1, 1, None, bf16, device, note="DCFormer stem k=3, groups=1")
    if full:
        for c, size, k in DCFORMER_SMALL_STAGES:
            yield _case(32, c, c, size, k, 1, c, None, bf16, device)
