"""Training and sampling for the ``segment`` and ``fast-ddpm`` commands: random crops, the fused
diffusion loss, DDP, checkpoints that resume exactly, sliding-window sampling.

Determinism. Everything random in training step s comes from ``seed_s = step_seed(seed, s)``:
the crops of the global batch (case, position; for segment, a crop centred on a tumour voxel
with probability ``fg_ratio``) and their timesteps (antithetic pairs over the global batch, as
the official Fast-DDPM trainer) from a generator seeded with ``seed_s``, and the noise of global
sample g from the in-kernel Philox stream ``(seed_s, offset g)``. Every rank draws the same plan
and takes its slice (rank r: samples r B .. r B + B - 1), so the global batch does not depend on
how it is split: W ranks of B crops train as 1 process of W B crops (DDP averages the gradients
of the per-rank mean losses; equal up to the summation order). The global torch RNG (dropout)
is saved per rank in the checkpoint and restored.

Checkpoints (``<output_dir>/checkpoint_<step>.pt`` and ``last.pt``, written by rank 0 every
``checkpoint_every`` steps and at the end, atomically) hold the model and optimizer state dicts,
the step, every rank's RNG state, the model spec and the training arguments; resuming from one
continues bit for bit: k steps + resume + k steps equal 2k steps.

Distributed: under ``torchrun`` (``torch.distributed.is_torchelastic_launched()``) the commands
join the process group (gloo on CPU, nccl on GPU) and wrap the model in
``DistributedDataParallel``; a process group that is already initialised is used as it is. No
loss here spans ranks (each rank's diffusion loss is over its own crops), so the ring sigmoid
loss of :mod:`medkernels.distributed` has no place in these pipelines.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..diffusion import FastDDPMSchedule
from ..models.diffusion_segmentation import ConditionalDDPM, DiffusionSegmentation, make_unet
from .data import Case

FORMAT = "medkernels.pipelines/1"
TASKS = ("segment", "fast-ddpm")
_GOLDEN = 0x9E3779B97F4A7C15


def step_seed(seed: int, step: int) -> int:
    """The seed of training step ``step`` (a 63-bit mix of the run's seed and the step)."""
    x = (int(seed) * _GOLDEN + (int(step) + 1) * 0xBF58476D1CE4E5B9) % 2**64
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 29)) % 2**63


@dataclass
class ModelSpec:
    """What builds the model (stored in every checkpoint)."""

    task: str
    config: str = "small"
    crop: int = 16
    schedule: str = "uniform"
    steps: int = 10
    sampler: str = "ddim"
    cond_channels: int = 2
    modality: str = "ct"  # fast-ddpm: the intensity range of input and target
    suv_max: float = 20.0


def build_model(spec: ModelSpec, backend: str = "auto") -> ConditionalDDPM:
    """The model of a spec: :class:`DiffusionSegmentation` (segment) or a 3D
    :class:`ConditionalDDPM` with one condition channel (fast-ddpm)."""
    if spec.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {spec.task!r}")
    schedule = FastDDPMSchedule(spec.schedule, steps=spec.steps)
    if spec.task == "segment":
        return DiffusionSegmentation(spec.config, modalities=spec.cond_channels, schedule=schedule,
                                     sampler=spec.sampler, backend=backend, image_size=spec.crop)
    unet = make_unet(spec.config, spec.cond_channels + 1, 1, backend=backend, image_size=spec.crop)
    return ConditionalDDPM(unet, spec.cond_channels, schedule, sampler=spec.sampler, backend=backend)


@dataclass
class TrainArgs:
    """The training loop's arguments (stored in every checkpoint)."""

    steps: int
    output_dir: str
    batch_size: int = 2  # per rank
    lr: float = 2e-4  # Fast-DDPM's Adam learning rate
    seed: int = 0
    checkpoint_every: int = 100
    grad_clip: Optional[float] = 1.0  # Fast-DDPM's
    fg_ratio: float = 0.5
    log_every: int = 10
    progress: bool = True


def _dist():
    """(rank, world) of the process group, initialising it under torchrun."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and dist.is_torchelastic_launched():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(device: str):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        if dist.is_initialized():
            torch.cuda.set_device(dist.get_node_local_rank(fallback_rank=0) % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def _plan(cases: Sequence[Case], crop: int, global_batch: int, seed_s: int, fg_ratio: float, model):
    """[(case index, (z, y, x) start)] for the global batch, and its timesteps."""
    g = torch.Generator().manual_seed(seed_s)
    plan = []
    for _ in range(global_batch):
        i = int(torch.randint(len(cases), (1,), generator=g))
        case = cases[i]
        shape = case.cond.shape[1:]
        fg = float(torch.rand(1, generator=g)) < fg_ratio
        start = None
        if fg and case.target is not None and case.fg is not None and case.fg.shape[0]:
            v = case.fg[int(torch.randint(case.fg.shape[0], (1,), generator=g))].tolist()
            start = tuple(min(max(c - crop // 2, 0), n - crop) for c, n in zip(v, shape))
        if start is None:
            start = tuple(int(torch.randint(n - crop + 1, (1,), generator=g)) for n in shape)
        plan.append((i, start))
    return plan, model.sample_timesteps(global_batch, g)


def _crop(x: torch.Tensor, start, crop: int) -> torch.Tensor:
    z, y, w = start
    return x[:, z:z + crop, y:y + crop, w:w + crop]


def prepare_cases(cases: List[Case], crop: int, task: str) -> List[Case]:
    """Pad every case to at least the crop (condition 0 for segment, -1 for fast-ddpm; target 0 /
    -1) and index the foreground voxels of segment masks (``case.fg``)."""
    import torch.nn.functional as F

    out = []
    low = 0.0 if task == "segment" else -1.0
    for c in cases:
        c = copy.copy(c)
        shape = c.cond.shape[1:]
        pad = []
        for n in reversed(shape):
            pad += [0, max(0, crop - n)]
        if any(pad):
            c.cond = F.pad(c.cond, pad, value=low)
            if c.target is not None:
                c.target = F.pad(c.target, pad, value=low if task != "segment" else 0.0)
        c.fg = torch.nonzero(c.target[0] > 0.5) if (task == "segment" and c.target is not None) else None
        out.append(c)
    return out


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_states(world: int) -> List[torch.Tensor]:
    state = torch.get_rng_state()
    if world == 1:
        return [state]
    states: List = [None] * world
    dist.all_gather_object(states, state)
    return states


def load_checkpoint(path: str) -> dict:
    """A pipeline checkpoint, checked; raises ValueError naming the file when it is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a medkernels pipeline checkpoint (format {FORMAT!r})")
    return ckpt


def train(cases: List[Case], spec: ModelSpec, args: TrainArgs, *, resume: Optional[str] = None,
          backend: str = "auto", device: str = "cpu", log: Callable[[str], None] = print) -> Dict:
    """Train ``spec``'s model on ``cases``; see the module docstring. Returns
    ``{"step", "losses" (the rank-averaged loss per step run here), "model" (unwrapped), "checkpoint"}``."""
    rank, world = _dist()
    dev = _device(device)
    start, ckpt = 0, None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        saved_spec, saved = ModelSpec(**ckpt["spec"]), ckpt["args"]
        if saved_spec != spec:
            raise ValueError(f"--resume {resume}: the checkpoint's model {asdict(saved_spec)} differs from the one "
                             f"asked for {asdict(spec)}")
        for name, now in (("seed", args.seed), ("lr", args.lr), ("global batch", args.batch_size * world)):
            was = saved["batch_size"] * ckpt["world"] if name == "global batch" else saved[name]
            if was != now:
                raise ValueError(f"--resume {resume}: the run used {name} {was}, this one {now}; resuming exactly "
                                 f"needs the same")
        start = int(ckpt["step"])
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = build_model(spec, backend).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        states = ckpt["rng"]
        torch.set_rng_state(states[rank] if len(states) == world else states[0])
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    cases = prepare_cases(cases, spec.crop, spec.task)
    B, crop = args.batch_size, spec.crop
    mine = slice(rank * B, rank * B + B)
    losses: List[float] = []
    steps = range(start, args.steps)
    bar = None
    if args.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps, initial=start, desc=f"{spec.task} train", unit="step", file=sys.stderr)
        log = bar.write
    last_path = None
    model.train()
    for step in steps:
        seed_s = step_seed(args.seed, step)
        plan, t = _plan(cases, crop, B * world, seed_s, args.fg_ratio, model)
        local = plan[mine]
        cond = torch.stack([_crop(cases[i].cond, s, crop) for i, s in local]).to(dev)
        target = torch.stack([_crop(cases[i].target, s, crop) for i, s in local]).to(dev)
        loss = net(cond, target, seed_s, t=t[mine].to(dev), offset=list(range(mine.start, mine.stop)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        value = loss.detach()
        if world > 1:
            dist.all_reduce(value)
            value = value / world
        losses.append(float(value))
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if rank == 0 and args.log_every and done % args.log_every == 0:
            log(f"step {done}/{args.steps}: loss {losses[-1]:.5g}")
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the loss is {losses[-1]} at step {done}: lower --lr")
        if done % args.checkpoint_every == 0 or done == args.steps:
            last_path = save_checkpoint(model, opt, spec, args, done, world, rank)
    if bar is not None:
        bar.close()
    return {"step": max(start, args.steps), "losses": losses, "model": model, "checkpoint": last_path}


def save_checkpoint(model, opt, spec: ModelSpec, args: TrainArgs, step: int, world: int, rank: int) -> str:
    """Write ``checkpoint_<step>.pt`` and ``last.pt`` (rank 0; every rank joins the RNG gather)."""
    states = _rng_states(world)
    path = os.path.join(args.output_dir, f"checkpoint_{step:07d}.pt")
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        obj = {"format": FORMAT, "step": step, "world": world, "spec": asdict(spec), "args": asdict(args),
               "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": states}
        _atomic_save(obj, path)
        _atomic_save(obj, os.path.join(args.output_dir, "last.pt"))
    if world > 1:
        dist.barrier()
    return path


def model_from_checkpoint(path: str, backend: str = "auto", device: str = "cpu"):
    """(model in eval mode, spec, checkpoint) from a pipeline checkpoint."""
    ckpt = load_checkpoint(path)
    spec = ModelSpec(**ckpt["spec"])
    model = build_model(spec, backend)
    model.load_state_dict(ckpt["model"])
    return model.to(_device(device)).eval(), spec, ckpt
