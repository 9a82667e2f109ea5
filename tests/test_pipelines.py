"""Issue 14 item 4: the ``segment`` and ``fast-ddpm`` pipelines (``medkernels.pipelines``, the CLI),
on tiny synthetic phantoms (12^3 volumes, 8^3 crops, the tiny UNet)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from medkernels.__main__ import main
from medkernels.pipelines.data import (
    SEGMENT_ROLES,
    find_cases,
    load_denoise_case,
    load_segment_case,
    save_like,
)
from medkernels.pipelines.phantom import make_denoising_phantom, make_phantom, write_segmentation_phantoms
from medkernels.pipelines.train import ModelSpec, TrainArgs, build_model, step_seed, train
from medkernels.testing import rel_err

nib = pytest.importorskip("nibabel")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = ModelSpec("segment", config="tiny", crop=8, steps=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("seg") / "data")
    write_segmentation_phantoms(folder, 2, seed=0, shape=(12, 12, 12))
    return folder


def _cases(folder):
    return [load_segment_case(f, need_mask=True) for f in find_cases(folder, SEGMENT_ROLES, ("pet", "ct", "mask"))]


def test_phantom_is_seeded_and_plausible():
    a, b, c = make_phantom((16, 20, 12), seed=3), make_phantom((16, 20, 12), seed=3), make_phantom((16, 20, 12), 4)
    for k in ("pet", "ct", "mask"):
        assert torch.equal(a[k], b[k]) and a[k].shape == (16, 20, 12)
    assert not torch.equal(a["pet"], c["pet"])
    m = a["mask"].bool()
    assert a["mask"].dtype == torch.uint8 and m.any()
    assert a["pet"][m].mean() > 3 * a["pet"][~m].mean()  # the tumour is hot on PET
    assert a["ct"].min() < -800 and 30 < a["ct"][m].mean() < 90  # air outside, soft tissue inside
    np.testing.assert_array_equal(np.diag(a["affine"])[:3], [4.0, 4.0, 4.0])
    d = make_denoising_phantom((12, 12, 12), seed=1)
    assert (d["input"] - d["target"]).std() > 100 and torch.equal(d["target"], make_phantom((12, 12, 12), 1)["ct"])
    with pytest.raises(ValueError, match=r"shape must be 3 ints >= 8"):
        make_phantom((4, 16, 16))


def test_nifti_output_keeps_the_inputs_grid_and_affine(tmp_path):
    """A non-RAS input (axes permuted and flipped, oblique-free): save_like writes the loaded (RAS)
    tensor back as the input file's array with the input's affine."""
    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    affine = np.array([[0.0, 0.0, -2.0, 30.0], [-1.5, 0.0, 0.0, 12.0], [0.0, 3.0, 0.0, -7.0], [0, 0, 0, 1]])
    src = tmp_path / "x_input.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), str(src))
    case = load_denoise_case(find_cases(str(tmp_path), {"input": ("_input",)}, ("input",))[0], "mr")
    assert case.meta.steps[0] == "ras" and not np.allclose(case.meta.affine, affine)
    out = tmp_path / "out.nii.gz"
    from medkernels.io import load_volume

    x, meta = load_volume(str(src))
    save_like(x[0], meta, str(out))
    img = nib.load(str(out))
    np.testing.assert_array_equal(img.affine, affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    with pytest.raises(ValueError, match="not the loaded grid"):
        save_like(x[0, :4], meta, str(out))


def test_resume_is_exact(seg_data, tmp_path):
    """2k steps == k steps + resume + k steps, bit for bit (model, optimizer, RNG, step)."""
    cases = _cases(seg_data)

    def args(steps, out):
        return TrainArgs(steps=steps, output_dir=str(tmp_path / out), batch_size=2, checkpoint_every=2, lr=1e-3,
                         progress=False, log_every=0)

    full = train(cases, SPEC, args(4, "full"))
    half = train(cases, SPEC, args(2, "half"))
    rest = train(cases, SPEC, args(4, "half"), resume=str(tmp_path / "half" / "last.pt"))
    assert half["losses"] + rest["losses"] == full["losses"] and rest["step"] == 4
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert all(torch.equal(x, y) for x, y in zip(a["rng"], b["rng"]))
    assert sorted(os.listdir(tmp_path / "half")) == ["checkpoint_0000002.pt", "checkpoint_0000004.pt", "last.pt"]
    # the per-step seeds are fixed by (seed, step): a different seed gives a different run
    assert step_seed(0, 3) != step_seed(1, 3) and step_seed(0, 3) != step_seed(0, 4)
    with pytest.raises(ValueError, match="the run used seed 0, this one 5"):
        bad = args(6, "half")
        bad.seed = 5
        train(cases, SPEC, bad, resume=str(tmp_path / "half" / "last.pt"))


def test_training_lowers_the_loss(seg_data, tmp_path):
    out = train(_cases(seg_data), SPEC, TrainArgs(steps=8, output_dir=str(tmp_path), batch_size=2, lr=2e-3,
                                                  checkpoint_every=100, progress=False, log_every=0))
    ls = out["losses"]
    assert all(np.isfinite(ls)) and np.mean(ls[-3:]) < np.mean(ls[:3]), ls


def test_ddp_under_torchrun_equals_one_process(seg_data, tmp_path):
    """2 gloo processes under torchrun with 1 crop each train like 1 process with both crops."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "medkernels", "segment", "train",
           "--data", seg_data, "--config", "tiny", "--crop", "8", "--timesteps", "2", "--steps", "2",
           "--batch-size", "1", "--lr", "1e-3", "--threads", "1", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x 2 processes" in proc.stdout
    ddp = torch.load(out / "last.pt", weights_only=True)
    assert ddp["world"] == 2 and len(ddp["rng"]) == 2
    one = train(_cases(seg_data), SPEC, TrainArgs(steps=2, output_dir=str(tmp_path / "one"), batch_size=2, lr=1e-3,
                                                  progress=False, log_every=0))
    # compared by what the networks compute: Adam turns the rounding noise of a gradient that is 0
    # in exact arithmetic (a bias before a GroupNorm, the attention's k bias) into a full lr-sized
    # step, so those parameters differ, but the function they compute does not depend on them
    twin = build_model(SPEC)
    twin.load_state_dict(ddp["model"])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8, 8, generator=g), torch.tensor([3.0, 600.0])
    with torch.no_grad():
        want, got = one["model"].unet(x, t), twin.unet(x, t)
    assert rel_err(got, want) < 1e-4
    torch.manual_seed(0)  # and the run did train: the weights moved from the initial ones
    moved = build_model(SPEC)
    with torch.no_grad():
        assert rel_err(moved.unet(x, t), want) > 1e-3


def test_segment_cli_end_to_end(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--output-dir", run, "--threads", "1", "--no-progress"]
    assert main(["segment", "train", "--phantom", "2", "--phantom-shape", "12", "12", "12", "--config", "tiny",
                 "--timesteps", "2", "--steps", "2", "--checkpoint-every", "1", *common]) == 0
    assert os.path.isfile(os.path.join(run, "checkpoint_0000001.pt"))
    outdir = str(tmp_path / "pred")
    # a 12^3 volume with an 8^3 crop: sliding-window sampling
    assert main(["segment", "sample", "--checkpoint", os.path.join(run, "last.pt"), "--data",
                 os.path.join(run, "phantom-data"), "--samples", "2", "--output-dir", outdir, "--threads", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Dice" in text and "mean Dice over 2 case(s)" in text
    src = nib.load(os.path.join(run, "phantom-data", "phantom000_pet.nii.gz"))
    for name, dtype in (("probability", np.float32), ("uncertainty", np.float32), ("prediction", np.uint8)):
        img = nib.load(os.path.join(outdir, f"phantom000_{name}.nii.gz"))
        np.testing.assert_array_equal(img.affine, src.affine)
        assert img.shape == src.shape and img.get_data_dtype() == dtype
    # resume auto continues the run
    assert main(["segment", "train", "--phantom", "2", "--phantom-shape", "12", "12", "12", "--config", "tiny",
                 "--timesteps", "2", "--steps", "3", "--resume", "auto", *common]) == 0
    assert "continuing" in capsys.readouterr().out
    assert torch.load(os.path.join(run, "last.pt"), weights_only=True)["step"] == 3


def test_fast_ddpm_cli_demo(tmp_path, capsys):
    run = str(tmp_path / "demo")
    assert main(["fast-ddpm", "demo", "--cases", "1", "--phantom-shape", "12", "12", "12", "--config", "tiny",
                 "--timesteps", "2", "--steps", "2", "--samples", "2", "--output-dir", run, "--threads", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "PSNR input" in text and "mean PSNR (dB) over 1 case(s)" in text
    out = nib.load(os.path.join(run, "phantom1000_output.nii.gz"))
    src = nib.load(os.path.join(run, "phantom-test", "phantom1000_input.nii.gz"))
    np.testing.assert_array_equal(out.affine, src.affine)
    assert out.shape == (12, 12, 12) and np.isfinite(np.asarray(out.dataobj)).all()
    assert os.path.isfile(os.path.join(run, "phantom1000_uncertainty.nii.gz"))


def test_cli_errors_are_one_line(tmp_path, capsys, seg_data):
    assert main(["segment", "sample", "--checkpoint", str(tmp_path / "nope.pt"), "--data", seg_data]) == 2
    assert "error: --checkpoint not found" in capsys.readouterr().err
    assert main(["segment", "train", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path)]) == 2
    assert "error: data folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", "train", "--data", str(empty), "--output-dir", str(tmp_path)]) == 2
    assert "no complete case in" in capsys.readouterr().err
    assert main(["segment", "train", "--data", seg_data, "--resume", str(tmp_path / "x.pt"),
                 "--output-dir", str(tmp_path)]) == 2
    assert "--resume checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["segment", "train", "--data", seg_data, "--phantom", "2"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", "train", "--phantom", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fast-ddpm", "train", "--phantom", "1", "--crop", "6"])
    assert "expected a multiple of 4 >= 4, got '6'" in capsys.readouterr().err
