"""Pairwise sigmoid (SigLIP) loss: ours per backend vs the eager reference (the N x N logits),
torch.compile of it and open_clip's ``SigLipLoss`` when installed, fwd and fwd+bwd.

On a GPU (the issue's targets, bf16 d=768): N = 8192, 32768 (fwd+bwd vs the reference, with peak
memory) and 65536 (runs on one GPU), providers ``cuda`` (our CUDA kernels) and ``triton``. Each GPU
case's note gives the bf16 ``torch.mm`` rate measured on the same device in the same run for the
case's (N x d) @ (d x N) GEMM: the TFLOP/s column (the logits GEMM, and dX, dY for fwd+bwd) over
that rate is the GEMM-phase fraction (target >= 60 %).

Per-rank memory of the distributed loss (ring vs all-gather on 2/4/8 gloo ranks) is not a timed
case (each run spawns processes): ``python benchmarks/bench_sigmoid_loss.py --distributed``
prints it, from :func:`distributed_peak_memory`.
"""

from __future__ import annotations

import math

import torch

from medkernels.bench import Case, time_fn
from medkernels.ops import sigmoid_loss
from medkernels.ops.sigmoid_loss import _DISPATCH, sigmoid_loss_backend
from medkernels.reference.sigmoid_loss import sigmoid_loss_ref
from medkernels.testing import rel_err


def _open_clip_loss():
    try:
        from open_clip.loss import SigLipLoss
    except Exception:  # not installed (an optional benchmark extra)
        return None
    return SigLipLoss()


def _ours(device: torch.device):
    names = []
    for b in _DISPATCH.backends:
        if b.name == "reference" or b.not_supported_reasons(device, torch.float32):
            continue
        if b.name == "triton" and device.type != "cuda":
            continue  # the interpreter is a correctness path, not a benchmark
        names.append(b.name)
    return names


_MM_RATE = {}


def _mm_tflops(n: int, d: int, dtype: torch.dtype, device: torch.device) -> float:
    """The measured torch.mm rate (TFLOP/s) of (n x d) @ (d x n) in ``dtype`` on ``device`` (cached per run)."""
    key = (n, d, dtype, str(device))
    if key not in _MM_RATE:
        a = torch.randn(n, d, device=device).to(dtype)
        b = torch.randn(d, n, device=device).to(dtype)
        ms = min(time_fn(lambda: torch.mm(a, b), device, repeats=5, min_time_s=0.2))
        _MM_RATE[key] = 2 * n * n * d / ms / 1e9
        del a, b
    return _MM_RATE[key]


def _case(n: int, d: int, dtype: torch.dtype, device: torch.device, backward: bool, compile_ref: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype)
    y = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype)
    t = torch.tensor(math.log(10.0), device=device)
    b = torch.tensor(-10.0, device=device)
    leaves = [x.requires_grad_(backward), y.requires_grad_(backward), t.requires_grad_(backward),
              b.requires_grad_(backward)]

    def run(fn):
        def call():
            for v in leaves:
                v.grad = None
            loss = fn(x, y, t, b)
            if backward:
                loss.backward()
            return loss

        return call

    providers = {"reference": run(lambda *a: sigmoid_loss_ref(*a))}
    for name in _ours(device):
        providers[name] = run(lambda *a, _n=name: sigmoid_loss(*a, backend=_n))
    providers[f"auto({sigmoid_loss_backend(x, y, grad=backward)})"] = run(lambda *a: sigmoid_loss(*a))
    if compile_ref:
        compiled = torch.compile(sigmoid_loss_ref)
        providers["torch.compile"] = run(lambda *a: compiled(*a))
    peer = _open_clip_loss()
    if peer is not None:
        # open_clip's SigLipLoss(image_features, text_features, logit_scale, logit_bias) takes exp(t')
        providers["open_clip"] = run(lambda xx, yy, tt, bb: peer(xx, yy, tt.exp(), bb))

    elem = x.element_size()
    flops = (6 if backward else 2) * n * n * d  # the logits GEMM, and dX, dY
    nbytes = (4 if backward else 2) * n * d * elem

    def check():
        ref = sigmoid_loss_ref(x.detach(), y.detach(), t.detach(), b.detach(), upcast=True)
        out = {}
        for name in providers:
            if name in ("reference", "torch.compile", "open_clip") or name.startswith("auto"):
                continue
            with torch.no_grad():
                val = sigmoid_loss(x.detach(), y.detach(), t.detach(), b.detach(), backend=name)
            out[name] = rel_err(val, ref)
        with torch.no_grad():
            out["reference"] = rel_err(sigmoid_loss_ref(x.detach(), y.detach(), t.detach(), b.detach()), ref)
        return out

    note = "SigLIP t'=log 10, b=-10, L2-normalised embeddings"
    if device.type == "cuda":
        note += (f"; torch.mm {str(dtype).replace('torch.', '')} ({n}x{d})@({d}x{n}) on this device: "
                 f"{_mm_tflops(n, d, dtype, device):.0f} TFLOP/s (GEMM-phase target: 60 % of it)")
    return Case(
        op="sigmoid_loss_fwd_bwd" if backward else "sigmoid_loss_fwd",
        shape=f"N={n} d={d}",
        dtype=dtype,
        providers=providers,
        bytes=nbytes,
        flops=flops,
        check=check if n <= (8192 if device.type == "cuda" else 4096) else None,
        note=note,
    )


def cases(device: torch.device, full: bool):
    if device.type == "cuda":
        # the GPU cases: N=32768 fwd+bwd vs the reference with peak memory, N=65536 on one GPU
        # (the reference's N x N bf16 matrices may not fit there: the harness records its failure)
        sizes = [8192, 32768, 65536] + ([16384] if full else [])
        for n in sizes:
            for backward in (False, True):
                yield _case(n, 768, torch.bfloat16, device, backward, compile_ref=full and n <= 16384)
        return
    # default: the CPU target (N=4096 d=512 fwd+bwd) and N=1024 both ways; full adds
    # N=4096 forward only, N=8192 and torch.compile of the reference
    sizes = [(1024, False), (1024, True), (4096, True)]
    if full:
        sizes += [(4096, False), (8192, False), (8192, True)]
    for n, backward in sizes:
        yield _case(n, 512, torch.float32, device, backward, compile_ref=full)


def distributed_peak_memory(worlds=(2, 4, 8), n_local: int = 512, d: int = 512, backend: str = "auto"):
    """Per-rank peak bytes (torch's CPU allocator, one fwd + bwd) of the distributed loss on
    ``world`` gloo ranks of ``n_local`` rows each: {(world, exchange): max over ranks}."""
    from medkernels.distributed._launch import peak_memory_worker, run_gloo

    out = {}
    for world in worlds:
        for exchange in ("ring", "all_gather"):
            peaks = run_gloo(world, peak_memory_worker, n_local, d, exchange, backend)
            out[(world, exchange)] = max(peaks)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distributed", action="store_true", help="per-rank peak memory, ring vs all-gather")
    ap.add_argument("--n-local", type=int, default=512)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--worlds", default="2,4,8")
    args = ap.parse_args()
    if args.distributed:
        res = distributed_peak_memory(tuple(int(w) for w in args.worlds.split(",")), args.n_local, args.d)
        print(f"per-rank peak MiB, {args.n_local} rows per rank, d={args.d}, fp32, fwd+bwd")
        print("ranks  ring  all_gather")
        for w in sorted({k[0] for k in res}):
            print(f"{w:5d}  {res[(w, 'ring')] / 2**20:5.1f}  {res[(w, 'all_gather')] / 2**20:10.1f}")
