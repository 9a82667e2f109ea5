"""``python -m medkernels embed VOLUME.nii.gz|FOLDER [--modality ct|mr|pet] [--model dcformer-small]
[--weights CKPT] [--output EMB.npy|EMB.pt]``

Reads a NIfTI volume (or every ``.nii``/``.nii.gz`` in a folder, with a progress bar), reorients
it to RAS, resamples it to the model's input size, normalises its intensities for the modality,
runs the DCFormer CLIP image tower and prints the embedding summary and, with a CLIP checkpoint,
the CT-RATE zero-shot table. Without ``--weights`` the model is randomly initialised from
``--seed`` and says so. ``python -m medkernels info`` is ``python -m medkernels.info``.

``python -m medkernels segment train|sample|demo`` and ``python -m medkernels fast-ddpm
train|sample|demo``: the 3D diffusion pipelines (:mod:`medkernels.pipelines`; see their ``--help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from ._dispatch import BACKEND_CHOICES
from .models.dcformer import DCFORMER_CONFIGS

MODELS = tuple(f"dcformer-{name}" for name in DCFORMER_CONFIGS)
OUTPUT_SUFFIXES = (".npy", ".pt")

_EMBED_EPILOG = f"""\
models: {', '.join(MODELS)} (the 'dcformer-' prefix may be left out)
backends: {', '.join(BACKEND_CHOICES)} (auto: the fastest usable here; see python -m medkernels info)

preprocessing (in this order):
  1. reorient to RAS (nibabel.as_closest_canonical)
  2. resample trilinearly to --input-size (D H W)
  3. intensities by --modality:
     ct   clip to the HU window -1000..1000 and scale it to [0, 1]
     mr   clip to the volume's 0.5th..99.5th percentiles, then z-score (mean 0, std 1)
     pet  SUV = value x weight[g] / dose[Bq] (--pet-weight, --pet-dose; without them the volume
          is taken as SUV already), clip to 0..--suv-max and scale to [0, 1]
  A warning is printed when the intensities do not look like the chosen modality.

output (--output): .npy, a float32 (N, hidden) array, one row per volume in the order printed
(a folder's files sorted by name), with the file names in OUTPUT.files.txt; .pt, a dict with
"embeddings" (N, hidden), "files", "model", "modality", "trained" and "seed".
"""


class _Parser(argparse.ArgumentParser):
    """argparse that ends a bad command line in one line (``prog: error: ...``) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _model_name(value: str) -> str:
    key = value.lower().removeprefix("dcformer-")
    if key not in DCFORMER_CONFIGS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODELS)}, got {value!r}")
    return key


def _number(convert, ok, expected: str):
    """An argparse type: ``convert`` the text, keep it if ``ok``, else say what was expected."""

    def parse(value: str):
        try:
            v = convert(value)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return v

    return parse


_positive_int = _number(int, lambda n: n >= 1, "a positive integer")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
_seed = _number(int, lambda n: 0 <= n < 2**63, "an integer in 0..2^63-1")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _volumes(path: str) -> List[str]:
    from .io import _EXTENSIONS

    if not os.path.isdir(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(_EXTENSIONS))
    return [os.path.join(path, n) for n in names]


def _load_weights(model, args) -> Optional[str]:
    """Loads --weights into the model; returns the error message, or None when it loaded."""
    try:
        sd = torch.load(args.weights, map_location="cpu", weights_only=True)
    except Exception as e:
        return f"cannot read --weights {args.weights} as a PyTorch checkpoint: {e}"
    sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        return f"--weights {args.weights} holds a {type(sd).__name__}, not a state dict"
    try:
        if any(k.startswith("mm_vision_proj.") for k in sd):
            missing, unexpected = model.load_state_dict(sd, strict=False)
            args.trained = not any(k.startswith(("vision_encoder.", "mm_")) for k in missing)
            print(f"loaded CLIP checkpoint {args.weights} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
        else:
            model.vision_encoder.load_official_state_dict(sd)
            print(f"loaded DCFormer encoder weights {args.weights} (projection heads untrained)")
    except (RuntimeError, ValueError, KeyError) as e:
        return f"--weights {args.weights} does not fit dcformer-{args.model}: {e}"
    return None


def _pet_factor(args) -> float:
    if args.pet_weight is None and args.pet_dose is None:
        return 1.0
    return args.pet_weight * 1000.0 / (args.pet_dose * 1e6)  # kg -> g, MBq -> Bq


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _embed_one(model, path, args, verbose: bool, warn=_warn):
    """(embedding (1, hidden), x) for one volume, or raises FileNotFoundError/VolumeError/ImportError."""
    from .io import load_volume, modality_warning, normalize_intensity

    x, meta = load_volume(path, shape=tuple(args.input_size))
    factor = _pet_factor(args)
    why = modality_warning(x, args.modality, factor)
    if why:
        warn(f"warning: {os.path.basename(path)}: {why}")
    x, step = normalize_intensity(x, args.modality, suv_factor=factor, suv_max=args.suv_max)
    meta.steps.append(step)
    with torch.inference_mode():
        if verbose:
            print(f"volume {path}: shape {tuple(meta.original_shape)} -> {tuple(x.shape[1:])}, "
                  f"spacing {tuple(round(s, 3) for s in meta.spacing)} mm, steps {meta.steps}")
            feats = model.vision_encoder.forward_features(x[None])
            print(f"last stage: {tuple(feats.shape)} (B, C, H, W, D)")
        emb = model.encode_image(x[None])
    return emb, x


def _save(path: str, embs: torch.Tensor, files: List[str], args) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".npy"):
        import numpy as np

        np.save(path, embs.float().numpy())
        with open(path + ".files.txt", "w") as f:
            f.write("".join(p + "\n" for p in files))
    else:
        torch.save({"embeddings": embs.float(), "files": files, "model": f"dcformer-{args.model}",
                    "modality": args.modality, "trained": args.trained, "seed": args.seed}, path)
    print(f"wrote {tuple(embs.shape)} embeddings to {path}")


def _embed(args) -> int:
    from .io import VolumeError
    from .models.clip import ByteTokenizer, DCFormerCLIP, pathology_table, zero_shot_probabilities

    if args.output is not None and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        return _fail(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {args.output!r}")
    if (args.pet_weight is None) != (args.pet_dose is None):
        return _fail("give both --pet-weight and --pet-dose (or neither: the volume is already SUV)")
    if args.backend != "auto":
        from ._dispatch import backends

        why = backends("cpu")["decomp_conv3d"].get(args.backend)
        if why:
            return _fail(f"--backend {args.backend} cannot run here: {why}")
    if args.weights and not os.path.isfile(args.weights):
        return _fail(f"--weights file not found: {args.weights}")
    if not os.path.exists(args.volume):
        return _fail(f"volume file not found: {args.volume}")
    files = _volumes(args.volume)
    if not files:
        return _fail(f"no .nii or .nii.gz files in the folder {args.volume}")
    torch.manual_seed(args.seed)
    model = DCFormerCLIP(args.model, hidden_size=args.hidden_size, backend=args.backend)
    args.trained = False
    if args.weights:
        why = _load_weights(model, args)
        if why:
            return _fail(why)
    else:
        print(f"NOTE: no --weights given: dcformer-{args.model} is UNTRAINED (random init, --seed {args.seed}); "
              f"numbers are not meaningful")
    model.eval()
    if os.path.isdir(args.volume):
        return _embed_folder(model, files, args, VolumeError)
    try:
        emb, x = _embed_one(model, files[0], args, verbose=True)
    except (FileNotFoundError, VolumeError, ImportError) as e:
        return _fail(str(e))
    print(f"embedding: {tuple(emb.shape)}, norm {emb.norm().item():.4f}, mean {emb.mean().item():+.4f}, "
          f"std {emb.std().item():.4f}")
    print("embedding[:8] = " + " ".join(f"{v:+.4f}" for v in emb[0, :8].tolist()))
    if args.trained:
        with torch.inference_mode():
            probs = zero_shot_probabilities(model, x[None], ByteTokenizer(), image_features=emb)
        print(pathology_table(probs))
    else:
        print("zero-shot table skipped: it needs a trained CLIP checkpoint (text tower + projections)")
    if args.output:
        _save(args.output, emb, files, args)
    return 0


def _embed_folder(model, files, args, volume_error) -> int:
    from tqdm.auto import tqdm

    def say(message: str) -> None:  # above the progress bar, not through it
        tqdm.write(message, file=sys.stderr)

    embs, done, failed = [], [], []
    for path in tqdm(files, desc="embed", unit="volume", file=sys.stderr):
        try:
            emb, _ = _embed_one(model, path, args, verbose=False, warn=say)
        except (FileNotFoundError, volume_error, ImportError) as e:
            failed.append(path)
            say(f"error: {e}")
            continue
        embs.append(emb)
        done.append(path)
    for path, emb in zip(done, embs):
        print(f"{os.path.basename(path)}: norm {emb.norm().item():.4f}, embedding[:4] = "
              + " ".join(f"{v:+.4f}" for v in emb[0, :4].tolist()))
    if embs and args.output:
        _save(args.output, torch.cat(embs), done, args)
    elif not args.output:
        print("(no --output given: the embeddings were not saved)")
    if failed:
        print(f"error: {len(failed)} of {len(files)} volumes could not be read: " + ", ".join(failed),
              file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = _Parser(prog="python -m medkernels", description="medkernels command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    emb = sub.add_parser("embed", help="embed NIfTI volumes with the DCFormer CLIP image tower",
                         description="Embed a NIfTI volume (or a folder of them) with the DCFormer CLIP image tower.",
                         epilog=_EMBED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    emb.add_argument("volume", help="a .nii/.nii.gz file, or a folder: every .nii/.nii.gz in it (batch mode)")
    emb.add_argument("--modality", choices=("ct", "mr", "pet"), default="ct",
                     help="intensity handling (default ct; see below)")
    emb.add_argument("--model", type=_model_name, default="small", metavar="NAME",
                     help="dcformer-nano|naive|tiny|small|base (default dcformer-small)")
    emb.add_argument("--weights", default=None, help="a DCFormer / Med3DVLM encoder or DCFormerCLIP checkpoint")
    emb.add_argument("--input-size", type=_positive_int, nargs=3, default=(128, 256, 256), metavar=("D", "H", "W"),
                     help="the model's input size (default 128 256 256)")
    emb.add_argument("--hidden-size", type=_positive_int, default=512, help="embedding width (default 512)")
    emb.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="kernel backend (default auto)")
    emb.add_argument("--seed", type=_seed, default=0,
                     help="seed of the random init when no --weights are given (default 0)")
    emb.add_argument("--output", default=None, metavar="FILE", help="save the embeddings to FILE.npy or FILE.pt")
    emb.add_argument("--pet-weight", type=_positive_float, default=None, metavar="KG", help="PET: patient weight")
    emb.add_argument("--pet-dose", type=_positive_float, default=None, metavar="MBQ",
                     help="PET: injected dose, decay-corrected to the scan")
    emb.add_argument("--suv-max", type=_positive_float, default=20.0, help="PET: SUV mapped to 1 (default 20)")
    sub.add_parser("info", help="build info and backends (python -m medkernels.info)")
    from .pipelines.cli import add_commands  # segment train|sample|demo, fast-ddpm train|sample|demo

    add_commands(sub, _number)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return args.run(args)
    if args.command == "info":
        from .info import main as info_main

        return info_main([]) or 0
    return _embed(args)


if __name__ == "__main__":
    sys.exit(main())
