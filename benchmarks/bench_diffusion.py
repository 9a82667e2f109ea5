"""Few-step diffusion (Fast-DDPM): each fused step per backend vs the eager chain of the official
formulas (``functions/denoising.py``: several full-volume passes plus ``torch.randn_like``),
torch.compile of that chain (GPU), and diffusers' DDIM/DDPM ``step`` when importable.

Shapes: 3D 1x1x128^3 (CPU default: 1x1x64^3) up to 2x1x160x224x224, and 2D 8x1x256x256.
Bytes are the minimum a fused pass moves: noise is made in the kernel, so q_sample reads x0 and
writes x_t (2 tensors), a step reads x_t and eps and writes x_next (3), the loss reads eps_pred and
writes its gradient (2).
"""

from __future__ import annotations

import torch

from medkernels.bench import Case
from medkernels.diffusion import FastDDPMSchedule, ddim_step, ddpm_step, diffusion_loss, q_sample
from medkernels.ops.diffusion import _DISPATCH
from medkernels.reference import diffusion as ref
from medkernels.testing import rel_err

SCHED = FastDDPMSchedule("uniform", 10)


def _backends(device: torch.device, dtype: torch.dtype, x: torch.Tensor):
    names = ["cpu"] if device.type == "cpu" else ["triton"]
    ok = []
    for b in names:
        try:
            _DISPATCH["ddim_step"].select(b, device, dtype, x=x)
            ok.append(b)
        except RuntimeError:
            pass
    return ok


def _eager(op: str, x, e, t, tn, table, eta):
    """The official eager chain: the formula in x's dtype with torch.randn_like noise."""
    if op == "q_sample":
        return lambda: ref.q_sample_ref(x, t, table, torch.randn_like(x), upcast=False)
    if op == "ddim_step":
        return lambda: ref.ddim_step_ref(x, e, t, tn, table, eta, torch.randn_like(x), upcast=False)[0]
    if op == "ddpm_step":
        return lambda: ref.ddpm_step_ref(x, e, t, tn, table, torch.randn_like(x), 1.0, upcast=False)[0]

    def loss():  # forward + backward of the official loss with a stored noise tensor
        ep = e.detach().requires_grad_()
        ref.diffusion_loss_ref(ep, torch.randn_like(x), upcast=False).backward()
    return loss


def _ours(op: str, x, e, t, tn, eta, backend):
    if op == "q_sample":
        return lambda: q_sample(x, t, schedule=SCHED, seed=1, offset=0, backend=backend)
    if op == "ddim_step":
        return lambda: ddim_step(x, e, t, tn, schedule=SCHED, eta=eta, seed=1, offset=0, backend=backend)
    if op == "ddpm_step":
        return lambda: ddpm_step(x, e, t, tn, schedule=SCHED, seed=1, offset=0, backend=backend)

    def loss():
        ep = e.detach().requires_grad_()
        diffusion_loss(ep, x, t, 1, schedule=SCHED, backend=backend).backward()
    return loss


def _peer(op: str, x, e, eta, device):
    """diffusers' scheduler step (one scalar timestep for the batch), if diffusers is importable."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        return None
    if op == "ddim_step":
        s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
        s.set_timesteps(10, device=device)
        return lambda: s.step(e, 901, x, eta=eta).prev_sample
    if op == "ddpm_step":
        s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        s.set_timesteps(10, device=device)
        return lambda: s.step(e, 901, x).prev_sample
    return None


def _case(op, shape, dtype, device, eta=0.0, note=""):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    e = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    B = shape[0]
    t = torch.full((B,), 901, dtype=torch.int64, device=device)
    tn = torch.full((B,), 801, dtype=torch.int64, device=device)
    table = SCHED.alpha_table(device)
    providers = {"reference": _eager(op, x, e, t, tn, table, eta)}
    for b in _backends(device, dtype, x):
        providers[b] = _ours(op, x, e, t, tn, eta, b)
    providers[f"auto({_DISPATCH[op].select('auto', device, dtype, x=x)})"] = _ours(op, x, e, t, tn, eta, "auto")
    if device.type == "cuda" and op != "diffusion_loss":
        providers["torch.compile"] = torch.compile(providers["reference"])
        peer = _peer(op, x, e, eta, device)
        if peer is not None:
            providers["diffusers"] = peer

    def check():
        z = ref.normal_ref(shape, 1, 0, device=device)
        errs = {}
        for b in _backends(device, dtype, x):
            if op == "q_sample":
                errs[b] = rel_err(q_sample(x, t, schedule=SCHED, seed=1, backend=b), ref.q_sample_ref(x, t, table, z))
            elif op == "ddim_step":
                errs[b] = rel_err(ddim_step(x, e, t, tn, schedule=SCHED, eta=eta, seed=1, backend=b),
                                  ref.ddim_step_ref(x, e, t, tn, table, eta, z)[0])
            elif op == "ddpm_step":
                errs[b] = rel_err(ddpm_step(x, e, t, tn, schedule=SCHED, seed=1, backend=b),
                                  ref.ddpm_step_ref(x, e, t, tn, table, z)[0])
            else:
                got = diffusion_loss(e, x, t, 1, schedule=SCHED, backend=b)
                errs[b] = rel_err(got.reshape(1), ref.diffusion_loss_ref(e, z).reshape(1))
        return errs

    n = x.numel() * x.element_size()
    nbytes = {"q_sample": 2 * n, "ddim_step": 3 * n, "ddpm_step": 3 * n, "diffusion_loss": 2 * n}[op]
    label = op + (f" eta={eta:g}" if op == "ddim_step" else "") + (" fwd+bwd" if op == "diffusion_loss" else "")
    return Case(op=label, shape="x".join(map(str, shape)), dtype=dtype, providers=providers, bytes=nbytes,
                check=check, note=note)


class _SmallUNet3d(torch.nn.Module):
    """A small conditional 3D eps-model (conv encoder/decoder with a skip and a time scale)."""

    def __init__(self, c_in: int = 2, width: int = 16):
        super().__init__()
        self.inp = torch.nn.Conv3d(c_in, width, 3, padding=1)
        self.down = torch.nn.Conv3d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = torch.nn.Conv3d(2 * width, 2 * width, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.out = torch.nn.Conv3d(2 * width, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.nn.functional.silu(self.inp(x))
        d = torch.nn.functional.silu(self.down(h))
        d = d * (1 + t / 1000).view(-1, 1, 1, 1, 1).to(d.dtype)
        d = torch.nn.functional.silu(self.mid(d))
        u = self.up(d)
        return self.out(torch.cat([h, u], 1))


def _sampler_case(shape, device, dtype=torch.float32, width: int = 16):
    """The whole 10-step DDIM (eta = 1) sampler: the official eager loop (torch.randn_like noise),
    ours eagerly, and ours captured in a CUDA graph (GPU)."""
    from medkernels.diffusion import FastDDPMSampler

    torch.manual_seed(0)
    model = _SmallUNet3d(width=width).to(device=device, dtype=dtype).eval()
    x_T = torch.randn(shape, device=device, dtype=dtype)
    cond = torch.randn(shape, device=device, dtype=dtype)
    providers = {"reference": lambda: ref.fast_ddpm_sample_ref(model, x_T, cond, SCHED, "ddim", 1.0,
                                                               noise_fn=torch.randn_like)}
    backend = "cpu" if device.type == "cpu" else "auto"
    eager = FastDDPMSampler(model, SCHED, "ddim", eta=1.0, backend=backend, progress=False, cuda_graph=False)
    providers["ours eager"] = lambda: eager(x_T, cond, seed=1)
    if device.type == "cuda":
        graphed = FastDDPMSampler(model, SCHED, "ddim", eta=1.0, progress=False, cuda_graph=True)
        providers["ours cuda-graph"] = lambda: graphed(x_T, cond, seed=1)
    return Case(op="FastDDPMSampler ddim eta=1 (small 3D UNet)", shape="x".join(map(str, shape)), dtype=dtype,
                providers=providers, note=f"{SCHED.timesteps.numel()} steps; the model dominates")


def cases(device: torch.device, full: bool):
    f32, bf16 = torch.float32, torch.bfloat16
    ops = [("q_sample", 0.0), ("ddim_step", 0.0), ("ddim_step", 1.0), ("ddpm_step", 0.0), ("diffusion_loss", 0.0)]
    if device.type == "cpu":
        shapes = [(1, 1, 64, 64, 64), (8, 1, 256, 256)] + ([(1, 1, 128, 128, 128)] if full else [])
        for shape in shapes:
            for op, eta in ops:
                yield _case(op, shape, f32, device, eta, note="issue target: CPU >= 3x the eager chain")
        yield _sampler_case((1, 1, 16, 16, 16), device, width=8)
        return
    shapes = [(1, 1, 128, 128, 128), (8, 1, 256, 256), (2, 1, 160, 224, 224)]
    for dtype in (f32, bf16):
        for shape in shapes if (full or dtype == f32) else shapes[:1]:
            for op, eta in ops:
                yield _case(op, shape, dtype, device, eta, note="issue target: >= 85% HBM bandwidth, >= 3x eager")
    yield _sampler_case((1, 1, 64, 64, 64), device)
    if full:
        yield _sampler_case((1, 1, 128, 128, 128), device)
