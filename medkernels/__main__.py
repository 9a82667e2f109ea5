"""``python -m medkernels embed VOLUME.nii.gz [--model dcformer-small] [--weights CKPT]``

Reads a CT volume (RAS, HU window -1000..1000, resampled to the model's input size), runs the
DCFormer CLIP image tower and prints the embedding summary and, with a CLIP checkpoint, the
CT-RATE zero-shot table. Without ``--weights`` the model is randomly initialised and says so.
``python -m medkernels info`` is ``python -m medkernels.info``.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch


def _embed(args) -> int:
    from .io import VolumeError, load_volume
    from .models.clip import ByteTokenizer, DCFormerCLIP, pathology_table, zero_shot_probabilities

    size = tuple(args.input_size)
    try:
        x, meta = load_volume(args.volume, shape=size, hu_window=(-1000.0, 1000.0))
    except (FileNotFoundError, VolumeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.model.lower().removeprefix("dcformer-")
    model = DCFormerCLIP(name, hidden_size=args.hidden_size, backend=args.backend)
    trained = False
    if args.weights:
        sd = torch.load(args.weights, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
        if any(k.startswith("mm_vision_proj.") for k in sd):
            missing, unexpected = model.load_state_dict(sd, strict=False)
            trained = not any(k.startswith(("vision_encoder.", "mm_")) for k in missing)
            print(f"loaded CLIP checkpoint {args.weights} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
        else:
            model.vision_encoder.load_official_state_dict(sd)
            print(f"loaded DCFormer encoder weights {args.weights} (projection heads untrained)")
    else:
        print(f"NOTE: no --weights given: dcformer-{name} is UNTRAINED (random init); numbers are not meaningful")
    model.eval()
    print(f"volume {args.volume}: shape {tuple(meta.original_shape)} -> {tuple(x.shape[1:])}, "
          f"spacing {tuple(round(s, 3) for s in meta.spacing)} mm, steps {meta.steps}")
    with torch.inference_mode():
        feats = model.vision_encoder.forward_features(x[None])
        emb = model.encode_image(x[None])
    print(f"last stage: {tuple(feats.shape)} (B, C, H, W, D); embedding: {tuple(emb.shape)}, "
          f"norm {emb.norm().item():.4f}, mean {emb.mean().item():+.4f}, std {emb.std().item():.4f}")
    print("embedding[:8] = " + " ".join(f"{v:+.4f}" for v in emb[0, :8].tolist()))
    if trained:
        with torch.inference_mode():
            probs = zero_shot_probabilities(model, x[None], ByteTokenizer(), image_features=emb)
        print(pathology_table(probs))
    else:
        print("zero-shot table skipped: it needs a trained CLIP checkpoint (text tower + projections)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medkernels")
    sub = parser.add_subparsers(dest="command", required=True)
    emb = sub.add_parser("embed", help="embed a NIfTI CT volume with the DCFormer CLIP image tower")
    emb.add_argument("volume")
    emb.add_argument("--model", default="dcformer-small")
    emb.add_argument("--weights", default=None, help="a DCFormer / Med3DVLM encoder or DCFormerCLIP checkpoint")
    emb.add_argument("--input-size", type=int, nargs=3, default=(128, 256, 256), metavar=("D", "H", "W"))
    emb.add_argument("--hidden-size", type=int, default=512)
    emb.add_argument("--backend", default="auto")
    sub.add_parser("info", help="build info and backends (python -m medkernels.info)")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main

        return info_main([]) or 0
    return _embed(args)


if __name__ == "__main__":
    sys.exit(main())
