"""``python -m medkernels segment train|sample|demo`` and ``python -m medkernels fast-ddpm
train|sample|demo``: the argument parsers and what each command runs (see ``--help``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, List, Optional

import torch

from .._dispatch import BACKEND_CHOICES
from ..models.diffusion_segmentation import SAMPLER_KINDS, SEGMENTATION_CONFIGS
from . import data as D

_TRAIN_EPILOG = """\
data (--data FOLDER, file names case-insensitive, .nii or .nii.gz):
  segment    <id>_pet, <id>_ct, <id>_mask (HECKTOR's <id>__PT, <id>__CT, <id>__gtvt also read);
             PET and CT on one grid. PET SUV clipped to 0..--suv-max and CT to -1000..1000 HU,
             each scaled to [0, 1]; the mask diffused as 2 m - 1.
  fast-ddpm  <id>_input (the condition) and <id>_target; both mapped to [-1, 1] from the range of
             --modality (ct: -1000..1000 HU, pet: SUV 0..--suv-max, mr: the input's 0.5..99.5th
             percentiles).
  --phantom N writes N synthetic cases (seeded by --seed) to OUTPUT_DIR/phantom-data and trains
  on them: nothing to download.

training: random --crop^3 crops (segment: centred on a tumour voxel with probability
--fg-ratio), timesteps from the --timesteps Fast-DDPM indices in antithetic pairs, our fused
q_sample + diffusion_loss, Adam (--lr), gradient norm clipped to 1. Checkpoints every
--checkpoint-every steps and at the end: OUTPUT_DIR/checkpoint_<step>.pt and last.pt (model,
optimizer, step, every rank's RNG state); --resume PATH (or auto: OUTPUT_DIR/last.pt when it
exists) continues exactly: k steps + resume + k steps equal 2k steps bit for bit.

multi-process / multi-machine: torchrun --nproc_per_node N -m medkernels segment train ...
(DistributedDataParallel; gloo on CPU, nccl on GPU); --batch-size is per process and the run
equals one process with N x --batch-size crops.
"""

_SAMPLE_EPILOG = """\
inputs: --data FOLDER (every complete case), or single files (segment: --pet and --ct, with
--mask for Dice; fast-ddpm: --input, with --target for the error), or --phantom N (N held-out
synthetic cases, seeds 1000...). A volume larger than the training crop is sampled by
sliding-window inference: at every diffusion step the eps prediction is blended over patches
overlapping by --overlap (Gaussian weights by default) and the step is fused over the volume.

outputs in OUTPUT_DIR, on the input file's grid and affine:
  segment    <id>_probability.nii.gz (the mean of the --samples samples, float32),
             <id>_uncertainty.nii.gz (their voxel-wise variance), <id>_prediction.nii.gz (uint8,
             probability > 0.5); Dice printed when a mask is given.
  fast-ddpm  <id>_output.nii.gz (the mean sample, in the input's units), with --samples > 1
             <id>_uncertainty.nii.gz; the PSNR of input and output against a target is printed.
"""


def _types(number: Callable):
    pos_int = number(int, lambda n: n >= 1, "a positive integer")
    nonneg_int = number(int, lambda n: n >= 0, "an integer >= 0")
    pos_float = number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
    fraction = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
    unit = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    seed = number(int, lambda n: 0 <= n < 2**63, "an integer in 0..2^63-1")
    even = number(int, lambda n: n >= 4 and n % 4 == 0, "a multiple of 4 >= 4")
    return pos_int, nonneg_int, pos_float, fraction, unit, seed, even


def add_commands(sub, number: Callable) -> None:
    """Register ``segment`` and ``fast-ddpm`` on ``sub`` (the main parser's subparsers);
    ``number`` is the CLI's argparse type factory."""
    pos_int, nonneg_int, pos_float, fraction, unit, seed, even = _types(number)
    for task, title in (("segment", "3D diffusion tumour segmentation on PET/CT (HECKTOR layout)"),
                        ("fast-ddpm", "3D Fast-DDPM image-to-image (denoising, translation) on NIfTI pairs")):
        top = sub.add_parser(task, help=title, description=title + ".")
        cmds = top.add_subparsers(dest="action", required=True, parser_class=type(top))
        fmt = argparse.RawDescriptionHelpFormatter
        tr = cmds.add_parser("train", help="train on a folder of NIfTI cases (or a synthetic phantom)",
                             description=f"Train the {task} model.", epilog=_TRAIN_EPILOG, formatter_class=fmt)
        sa = cmds.add_parser("sample", help="sample a trained checkpoint on NIfTI volumes",
                             description=f"Sample the {task} model.", epilog=_SAMPLE_EPILOG, formatter_class=fmt)
        de = cmds.add_parser("demo", help="phantom -> train -> sample in one command (CPU, minutes)",
                             description=f"Generate synthetic cases, train the {task} model on them, sample a "
                                         f"held-out case and report the result.", formatter_class=fmt,
                             epilog=_TRAIN_EPILOG)
        for p in (tr, sa, de):
            p.add_argument("--output-dir", default=os.path.join("runs", task), metavar="DIR",
                           help=f"checkpoints / outputs (default runs/{task})")
            p.add_argument("--seed", type=seed, default=0, help="the run's seed (default 0)")
            p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="fused-op backend (default auto)")
            p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="(default cpu)")
            p.add_argument("--no-progress", action="store_true", help="no progress bars")
            p.add_argument("--threads", type=nonneg_int, default=0,
                           help="CPU threads per process (default 0: torch's default; 1 on a busy machine)")
            p.add_argument("--suv-max", type=pos_float, default=20.0, help="PET SUV mapped to 1 (default 20)")
            if task == "fast-ddpm":
                p.add_argument("--modality", choices=D.MODALITIES, default="ct",
                               help="intensity range of input and target (default ct)")
        for p in (tr, de):
            if p is tr:
                src = p.add_mutually_exclusive_group(required=True)
                src.add_argument("--data", metavar="FOLDER", help="the training cases (layout below)")
                src.add_argument("--phantom", type=pos_int, metavar="N", help="train on N synthetic cases")
            else:
                p.add_argument("--cases", type=pos_int, default=4, help="synthetic training cases (default 4)")
            p.add_argument("--phantom-shape", type=even, nargs=3, default=(32, 32, 32), metavar=("D", "H", "W"),
                           help="grid of the synthetic cases (default 32 32 32)")
            p.add_argument("--config", choices=sorted(SEGMENTATION_CONFIGS), default="small",
                           help="UNet size (default small: 32 channels, 3 levels)")
            p.add_argument("--crop", type=even, default=None,
                           help="training crop edge (default: the config's, small 16, tiny 8, base 96)")
            p.add_argument("--timesteps", type=pos_int, default=10, help="Fast-DDPM sampling steps S (default 10)")
            p.add_argument("--schedule", choices=("uniform", "non-uniform"), default="uniform",
                           help="Fast-DDPM timestep indices (default uniform)")
            ddpm = task == "fast-ddpm" and p is de
            p.add_argument("--sampler", choices=SAMPLER_KINDS, default="ddpm" if ddpm else "ddim",
                           help="ddim (eta 0) or ddpm (ancestral, x0 clipped to [-1, 1]: steadier after a short "
                                f"training) (default {'ddpm' if ddpm else 'ddim'})")
            p.add_argument("--steps", type=pos_int, default=1000 if p is tr else 300,
                           help=f"training steps (default {1000 if p is tr else 300})")
            p.add_argument("--batch-size", type=pos_int, default=2, help="crops per step per process (default 2)")
            p.add_argument("--lr", type=pos_float, default=2e-4 if p is tr else 1e-3,
                           help=f"Adam learning rate (default {2e-4 if p is tr else 1e-3:g})")
            p.add_argument("--checkpoint-every", type=pos_int, default=100, help="(default 100 steps)")
            p.add_argument("--log-every", type=nonneg_int, default=50, help="print the loss every N steps (0: never)")
            if task == "segment":
                p.add_argument("--fg-ratio", type=unit, default=0.5,
                               help="share of crops centred on a tumour voxel (default 0.5)")
        tr.add_argument("--resume", default=None, metavar="CKPT|auto", help="continue a run exactly")
        for p in (sa, de):
            p.add_argument("--samples", type=pos_int, default=4, help="samples per case (default 4)")
            p.add_argument("--overlap", type=fraction, default=0.5, help="sliding-window overlap (default 0.5)")
            p.add_argument("--blend", choices=("gaussian", "linear", "constant"), default="gaussian",
                           help="sliding-window weights (default gaussian)")
        sa.add_argument("--checkpoint", required=True, metavar="CKPT", help="a train checkpoint (last.pt)")
        sa.add_argument("--sampler", choices=SAMPLER_KINDS, default=None,
                        help="override the checkpoint's sampler (ddim: eta 0; ddpm: x0 clipped to [-1, 1])")
        src = sa.add_mutually_exclusive_group(required=True)
        src.add_argument("--data", metavar="FOLDER", help="every complete case in FOLDER")
        src.add_argument("--phantom", type=pos_int, metavar="N", help="N held-out synthetic cases")
        sa.add_argument("--phantom-shape", type=even, nargs=3, default=(32, 32, 32), metavar=("D", "H", "W"))
        if task == "segment":
            src.add_argument("--pet", metavar="FILE", help="one case's PET (with --ct)")
            sa.add_argument("--ct", metavar="FILE", help="one case's CT (with --pet)")
            sa.add_argument("--mask", metavar="FILE", help="its reference mask (Dice)")
        else:
            src.add_argument("--input", metavar="FILE", help="one input volume")
            sa.add_argument("--target", metavar="FILE", help="its target (PSNR)")
        for p, run in ((tr, _train), (sa, _sample), (de, _demo)):
            p.set_defaults(run=_threaded(run), task=task)


# --- running ----------------------------------------------------------------------------------
def _threaded(run):
    def with_threads(args) -> int:
        if not args.threads:
            return run(args)
        n = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            return run(args)
        finally:
            torch.set_num_threads(n)

    return with_threads


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _rank():
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _load(task: str, files: List[D.CaseFiles], args, need: bool) -> List[D.Case]:
    if task == "segment":
        return [D.load_segment_case(f, args.suv_max, need_mask=need) for f in files]
    return [D.load_denoise_case(f, args.modality, args.suv_max, need_target=need) for f in files]


def _roles(task: str):
    return (D.SEGMENT_ROLES, ("pet", "ct")) if task == "segment" else (D.DENOISE_ROLES, ("input",))


def _write_phantoms(task: str, folder: str, n: int, seed: int, shape) -> None:
    import torch.distributed as dist

    from .phantom import write_denoising_phantoms, write_segmentation_phantoms
    from .train import _dist

    rank, world = _dist()
    if rank == 0:
        (write_segmentation_phantoms if task == "segment" else write_denoising_phantoms)(folder, n, seed, shape)
        print(f"wrote {n} synthetic {task} case(s) ({'x'.join(map(str, shape))}) to {folder}")
    if world > 1:
        dist.barrier()


def _spec(args):
    from .train import ModelSpec

    crop = args.crop if args.crop is not None else SEGMENTATION_CONFIGS[args.config]["image_size"]
    levels = len(SEGMENTATION_CONFIGS[args.config]["ch_mult"])
    if crop % 2 ** (levels - 1):
        raise ValueError(f"--crop must be a multiple of {2 ** (levels - 1)} for --config {args.config}, got {crop}")
    return ModelSpec(task=args.task, config=args.config, crop=crop, schedule=args.schedule, steps=args.timesteps,
                     sampler=args.sampler, cond_channels=2 if args.task == "segment" else 1,
                     modality=getattr(args, "modality", "ct"), suv_max=args.suv_max)


def _train(args, phantom_folder: Optional[str] = None) -> int:
    from ..io import VolumeError
    from .train import TrainArgs, _dist, train

    try:
        _dist()  # under torchrun: join the process group first
        spec = _spec(args)
        folder = args.data
        if folder is None:
            folder = phantom_folder or os.path.join(args.output_dir, "phantom-data")
            _write_phantoms(args.task, folder, args.phantom if phantom_folder is None else args.cases, args.seed,
                            tuple(args.phantom_shape))
        roles, required = _roles(args.task)
        files = D.find_cases(folder, roles, required + (("mask",) if args.task == "segment" else ("target",)))
        cases = _load(args.task, files, args, need=True)
        resume = getattr(args, "resume", None)
        if resume == "auto":
            last = os.path.join(args.output_dir, "last.pt")
            resume = last if os.path.isfile(last) else None
            print(f"resume auto: {'continuing ' + last if resume else 'no ' + last + ', starting a new run'}")
        elif resume is not None and not os.path.isfile(resume):
            return _fail(f"--resume checkpoint not found: {resume}")
        targs = TrainArgs(steps=args.steps, output_dir=args.output_dir, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, checkpoint_every=args.checkpoint_every,
                          fg_ratio=getattr(args, "fg_ratio", 0.0), log_every=args.log_every,
                          progress=not args.no_progress)
        rank, world = _rank()
        if rank == 0:
            print(f"{args.task}: {len(cases)} case(s) from {folder}; model {spec.config} at {spec.crop}^3, "
                  f"S={spec.steps} {spec.schedule} {spec.sampler}; {args.steps} steps x {args.batch_size} crops"
                  + (f" x {world} processes" if world > 1 else ""))
        out = train(cases, spec, targs, resume=resume, backend=args.backend, device=args.device)
    except (FileNotFoundError, ValueError, VolumeError, FloatingPointError) as e:
        return _fail(str(e))
    if _rank()[0] == 0:
        ls = out["losses"]
        if ls:
            k = max(1, len(ls) // 10)
            print(f"loss: first {k} steps {sum(ls[:k]) / k:.5g}, last {k} steps {sum(ls[-k:]) / k:.5g}")
        print(f"checkpoint: {os.path.join(args.output_dir, 'last.pt')} (step {out['step']})")
    return 0


def _sample_files(args) -> List[D.CaseFiles]:
    if args.task == "segment" and args.pet is not None:
        if args.ct is None:
            raise ValueError("--pet needs --ct (and optionally --mask)")
        paths = {"pet": args.pet, "ct": args.ct, **({"mask": args.mask} if args.mask else {})}
        return [D.CaseFiles(D._strip_ext(os.path.basename(args.pet)) or "case", paths)]
    if args.task == "fast-ddpm" and args.input is not None:
        paths = {"input": args.input, **({"target": args.target} if args.target else {})}
        return [D.CaseFiles(D._strip_ext(os.path.basename(args.input)) or "case", paths)]
    if args.task == "segment" and (args.ct or args.mask):
        raise ValueError("--ct and --mask go with --pet")
    if args.task == "fast-ddpm" and args.target:
        raise ValueError("--target goes with --input")
    folder = args.data
    if folder is None:
        folder = os.path.join(args.output_dir, "phantom-test")
        _write_phantoms(args.task, folder, args.phantom, 1000, tuple(args.phantom_shape))
    roles, required = _roles(args.task)
    return D.find_cases(folder, roles, required)


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = float((x.double() - y.double()).square().mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")  # peak to peak 2 on [-1, 1]


def _sample(args, checkpoint: Optional[str] = None) -> int:
    from ..io import VolumeError
    from .train import _dist, model_from_checkpoint

    try:
        _dist()  # under torchrun: join the group, each rank samples its share of the cases
        ckpt_path = checkpoint or args.checkpoint
        if not os.path.isfile(ckpt_path):
            return _fail(f"--checkpoint not found: {ckpt_path}")
        model, spec, ckpt = model_from_checkpoint(ckpt_path, args.backend, args.device)
        if spec.task != args.task:
            return _fail(f"--checkpoint {ckpt_path} is a {spec.task} model, not {args.task}")
        if getattr(args, "sampler", None) and checkpoint is None:
            model.sampler_kind = args.sampler
        if args.task == "fast-ddpm":
            args.modality, args.suv_max = spec.modality, spec.suv_max
        else:
            args.suv_max = spec.suv_max
        files = _sample_files(args)
        rank, world = _rank()
        mine = files[rank::world]
        cases = _load(args.task, mine, args, need=False)
    except (FileNotFoundError, ValueError, VolumeError) as e:
        return _fail(str(e))
    os.makedirs(args.output_dir, exist_ok=True)
    dev = next(model.parameters()).device
    print(f"{args.task} sample: {ckpt_path} (step {ckpt['step']}), {len(cases)} case(s), {args.samples} sample(s) "
          f"each, {model.sampler_kind} S={spec.steps}, crop {spec.crop}^3"
          + (f" [rank {rank}/{world}]" if world > 1 else ""))
    scores = []
    from tqdm.auto import tqdm

    bar = tqdm(cases, desc=f"{args.task} sample", unit="case", file=sys.stderr, disable=args.no_progress)
    for case in bar:
        cond = case.cond[None].to(dev)
        kw = dict(num_samples=args.samples, seed=args.seed, overlap=args.overlap, blend=args.blend,
                  progress=not args.no_progress)
        base = os.path.join(args.output_dir, case.id)
        if args.task == "segment":
            ref = case.target[None].to(dev) if case.target is not None else None
            res = model.segment(cond, reference=ref, **kw)
            D.save_like(res.mean[0, 0].float(), case.meta, base + "_probability.nii.gz")
            D.save_like(res.uncertainty[0, 0].float(), case.meta, base + "_uncertainty.nii.gz")
            D.save_like(res.mask[0, 0].to(torch.uint8), case.meta, base + "_prediction.nii.gz")
            msg = (f"{case.id}: {int(res.mask.sum())} voxels predicted, mean uncertainty "
                   f"{float(res.uncertainty.mean()):.4g}")
            if res.dice is not None:
                scores.append(float(res.dice[0]))
                msg += f", reference {int(case.target.sum())} voxels, Dice {scores[-1]:.4f}"
        else:
            x0 = model.sample(cond, **kw)
            mean = x0.mean(dim=0)
            D.save_like(D.unscale(mean[0, 0].clamp(-1, 1), *case.range).float(), case.meta, base + "_output.nii.gz")
            if args.samples > 1:
                from ..models.diffusion_segmentation import sample_variance

                var = sample_variance(D.unscale(x0[:, 0, 0], *case.range))
                D.save_like(var.float(), case.meta, base + "_uncertainty.nii.gz")
            msg = f"{case.id}: output {tuple(mean.shape[2:])}"
            if case.target is not None:
                p_in, p_out = _psnr(case.cond[0], case.target[0]), _psnr(mean[0, 0].cpu().clamp(-1, 1), case.target[0])
                scores.append(p_out)
                msg += f", PSNR input {p_in:.2f} dB -> output {p_out:.2f} dB"
        bar.write(msg)
    if scores:
        name = "Dice" if args.task == "segment" else "PSNR (dB)"
        print(f"mean {name} over {len(scores)} case(s): {sum(scores) / len(scores):.4f}")
    print(f"outputs in {args.output_dir}")
    return 0


def _demo(args) -> int:
    args.data, args.resume = None, None
    rc = _train(args, phantom_folder=os.path.join(args.output_dir, "phantom-data"))
    if rc:
        return rc
    args.phantom, args.checkpoint = 1, os.path.join(args.output_dir, "last.pt")
    if args.task == "segment":
        args.pet = args.ct = args.mask = None
    else:
        args.input = args.target = None
    return _sample(args)
