"""GroupNorm + SiLU (the diffusion UNets' ResBlock norm): ours per backend vs the eager chain
``F.silu(F.group_norm(x, G, w, b, eps))``, and torch.compile of it on a GPU, in one run.

Shapes: the 3D UNet feature maps of issue 13 at 32 groups, 1x128x48^3 and 1x256x24^3 (default),
2x64x96^3 (--full); float32 and bfloat16; NCDHW and channels-last; forward (no grad) and
forward + backward (x, weight and bias need grads). Bytes are the minimum a fused kernel moves:
the forward reads x and writes y (2 tensors), forward + backward adds reading x and grad_y and
writing grad_x (5 in all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkernels.bench import Case
from medkernels.ops import group_norm_act
from medkernels.ops.group_norm import _DISPATCH
from medkernels.reference.group_norm import group_norm_act_ref
from medkernels.testing import rel_err

GROUPS, EPS = 32, 1e-5
DEFAULT_SHAPES = [(1, 128, 48, 48, 48), (1, 256, 24, 24, 24)]
FULL_SHAPES = [(2, 64, 96, 96, 96)]


def _backends(device: torch.device, x: torch.Tensor):
    names = ["cpu"] if device.type == "cpu" else ["triton", "cuda"]
    ok = []
    for b in names:
        try:
            _DISPATCH.select(b, device, x.dtype, x=x)
            ok.append(b)
        except RuntimeError:
            pass
    return ok


def _eager(x, w, b):
    return F.silu(F.group_norm(x, GROUPS, w, b, EPS))


def _ours(backend):
    def run(x, w, b):
        return group_norm_act(x, GROUPS, w, b, eps=EPS, activation="silu", backend=backend)
    return run


def _case(shape, dtype, device, channels_last=False, backward=False, note=""):
    g = torch.Generator(device="cpu").manual_seed(0)
    C = shape[1]
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    w = (1 + 0.1 * torch.randn(C, generator=g)).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(C, generator=g)).to(device=device, dtype=dtype)
    fns = {"reference": _eager}
    for name in _backends(device, x):
        fns[name] = _ours(name)
    # our reference backend (PyTorch's group norm + the FiLM/activation ops, in the op): what auto
    # picks where our kernels lose, so the rule is judged against it (tests/test_bench_rules.py)
    fns["ours-reference"] = _ours("reference")
    fns[f"auto({_DISPATCH.select('auto', device, dtype, x=x, grad=backward)})"] = _ours("auto")
    if device.type == "cuda":
        fns["torch.compile"] = torch.compile(_eager)

    if backward:
        xg, wg, bg = (t.detach().requires_grad_(True) for t in (x, w, b))
        gy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        if channels_last:
            gy = gy.to(memory_format=torch.channels_last_3d)

        def wrap(fn):
            return lambda: fn(xg, wg, bg).backward(gy)
    else:
        def wrap(fn):
            def run():
                with torch.no_grad():
                    return fn(x, w, b)
            return run
    providers = {name: wrap(fn) for name, fn in fns.items()}

    def check():
        # forward error against the float64 reference, every provider but auto
        with torch.no_grad():
            want = group_norm_act_ref(x.double(), GROUPS, w.double(), b.double(), EPS, activation="silu")
            return {name: rel_err(fn(x, w, b), want) for name, fn in fns.items() if not name.startswith("auto")}

    n = x.numel() * x.element_size()
    layout = "NDHWC" if channels_last else "NCDHW"
    return Case(op="group_norm_silu" + (" fwd+bwd" if backward else " fwd"),
                shape=f"{'x'.join(map(str, shape))} G{GROUPS} {layout}", dtype=dtype, providers=providers,
                bytes=(5 if backward else 2) * n, check=check, note=note)


def cases(device: torch.device, full: bool):
    shapes = DEFAULT_SHAPES + (FULL_SHAPES if full else [])
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                for backward in (False, True):
                    yield _case(shape, dtype, device, channels_last=channels_last, backward=backward,
                                note="issue 13 target: CPU >= 2.5x eager" if device.type == "cpu" else "")
