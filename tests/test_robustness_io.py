"""Regression tests for issue 16's input/output items: layout-independent diffusion noise, schedule
and step argument checks, NIfTI dtype/affine/NaN handling, the embed command and the bench chart
notice."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from test_diffusion import _backends as _diffusion_backends  # tests/ is on sys.path under pytest

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels.diffusion import FastDDPMSchedule, ddim_step, ddpm_step, randn
from medkernels.diffusion import schedule as schedule_mod
from medkernels.reference import diffusion as ref


def _backends(op="q_sample"):
    return _diffusion_backends(op) + ["auto"]


# --- A: randn follows logical order whatever the layout of `like` -----------------------------
def _layouts():
    shape = (2, 3, 4, 5, 6)
    cl = torch.empty(shape).to(memory_format=torch.channels_last_3d)
    perm = torch.empty(2, 6, 5, 4, 3).permute(0, 4, 3, 2, 1)
    strided = torch.empty(2, 6, 4, 5, 6)[:, ::2]
    expanded = torch.empty(1, 1, 4, 5, 6).expand(shape)
    return shape, {"channels_last_3d": cl, "permuted": perm, "strided": strided, "expanded": expanded}


@pytest.mark.parametrize("backend", _backends())
def test_randn_same_noise_whatever_the_layout(backend):
    shape, layouts = _layouts()
    want = randn(torch.empty(shape), 7, 3, backend=backend)
    assert (want - ref.normal_ref(shape, 7, 3)).abs().max().item() <= 2e-6
    for name, like in layouts.items():
        assert like.shape == shape
        got = randn(like, 7, 3, backend=backend)
        assert got.shape == shape and got.is_contiguous(), name
        assert torch.equal(got, want), f"{backend} {name}: noise depends on the layout of like"


# --- B: NIfTI dtypes, single-slice affines, NaN-aware minmax, integer shapes -------------------
@pytest.fixture
def nib():
    return pytest.importorskip("nibabel")


def _write(nib, path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("dtype,value", [(torch.int64, 40000), (torch.int64, 2**40 + 3), (torch.int32, -70000),
                                         (torch.float64, 1.0 + 2**-40), (torch.uint8, 255), (torch.int16, -3)])
def test_save_volume_keeps_the_dtype(tmp_path, nib, dtype, value):
    from medkernels.io import save_volume

    t = torch.zeros(3, 4, 5, dtype=dtype)
    t[1, 2, 3] = value
    save_volume(t, np.eye(4), tmp_path / "lab.nii.gz")
    img = nib.load(str(tmp_path / "lab.nii.gz"))
    arr = np.asarray(img.dataobj)
    assert arr.dtype == t.numpy().dtype, f"{dtype} stored as {arr.dtype}"
    assert arr[1, 2, 3] == value and torch.equal(torch.from_numpy(arr), t)


def test_save_volume_bool_and_half(tmp_path, nib):
    from medkernels.io import save_volume

    save_volume(torch.ones(2, 2, 2, dtype=torch.bool), np.eye(4), tmp_path / "m.nii")
    assert np.asarray(nib.load(str(tmp_path / "m.nii")).dataobj).dtype == np.uint8
    h = torch.tensor([0.1, 60000.0], dtype=torch.float16).repeat(4).reshape(2, 2, 2)
    save_volume(h, np.eye(4), tmp_path / "h.nii")
    back = np.asarray(nib.load(str(tmp_path / "h.nii")).dataobj)
    assert back.dtype == np.float32 and np.array_equal(back, h.float().numpy())


def test_single_slice_volume_resampled_saves_and_stays_aligned(tmp_path, nib):
    from medkernels.io import load_volume, save_volume

    aff = np.diag([1.0, 1.2, 3.0, 1.0])
    aff[:3, 3] = [4.0, -2.0, 1.0]
    src = _write(nib, tmp_path / "slice.nii", np.arange(64, dtype=np.float32).reshape(1, 8, 8), aff)
    x, meta = load_volume(src, shape=(4, 8, 8))
    assert x.shape == (1, 4, 8, 8)
    assert abs(np.linalg.det(meta.affine[:3, :3])) > 0 and min(meta.spacing) > 0
    # the 4 copies of the one slice sit centred on it, inside its extent
    centre = (meta.affine @ np.array([1.5, 0, 0, 1.0]))[:3]
    assert np.allclose(centre, aff[:3, 3])
    save_volume(x, meta, tmp_path / "out.nii.gz")
    back = nib.load(str(tmp_path / "out.nii.gz"))
    assert np.allclose(back.affine, meta.affine, atol=1e-6)
    assert np.allclose(np.asarray(back.dataobj), x[0].numpy())
    _, meta2 = load_volume(src, spacing=(0.25, 1.2, 3.0))  # spacing= reaches the same case
    assert abs(np.linalg.det(meta2.affine[:3, :3])) > 0


def test_save_volume_refuses_a_singular_affine(tmp_path, nib):
    from medkernels.io import save_volume

    with pytest.raises(ValueError, match="affine must be finite and invertible"):
        save_volume(torch.zeros(2, 2, 2), np.diag([0.0, 1.0, 1.0, 1.0]), tmp_path / "bad.nii")


def test_minmax_is_nan_aware(tmp_path, nib):
    from medkernels.io import load_volume

    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    data[1, 1, 1] = np.nan
    src = _write(nib, tmp_path / "nan.nii", data, np.eye(4))
    x, _ = load_volume(src, minmax=True)
    x = x[0].numpy()
    assert np.isnan(x[1, 1, 1]) and np.isnan(x).sum() == 1
    assert x[0, 0, 0] == 0.0 and x[2, 2, 2] == 1.0
    assert np.allclose(x[0, 0, 1], 1 / 26)
    const = _write(nib, tmp_path / "c.nii", np.full((2, 2, 2), 5.0, np.float32), np.eye(4))
    assert float(load_volume(const, minmax=True)[0].abs().max()) == 0.0


@pytest.mark.parametrize("arg,bad", [("shape", (4.5, 4, 4)), ("shape", (4, 4)), ("shape", (True, 4, 4)),
                                     ("shape", (0, 4, 4)), ("crop_or_pad", (2.0, 2, 2)),
                                     ("spacing", (1.0, float("nan"), 1.0)), ("spacing", (1.0, 0.0, 1.0))])
def test_load_volume_refuses_non_integer_sizes(tmp_path, nib, arg, bad):
    from medkernels.io import load_volume

    src = _write(nib, tmp_path / "v.nii", np.ones((6, 6, 6), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=arg):
        load_volume(src, **{arg: bad})
    x, _ = load_volume(src, shape=(np.int64(4), 5, 3))  # numpy ints are ints
    assert x.shape == (1, 4, 5, 3)


# --- C: schedule and step arguments, differentiable steps, the trainer/sampler docstring -------
@pytest.mark.parametrize("kw,arg", [({"beta_start": -0.5}, "beta_start"), ({"beta_start": float("nan")}, "beta_start"),
                                    ({"beta_end": 1.5}, "beta_end"), ({"beta_end": float("inf")}, "beta_end"),
                                    ({"beta_start": 0.0}, "beta_start"), ({"beta_start": True}, "beta_start"),
                                    ({"beta_start": 0.3, "beta_end": 0.1}, "beta_start must be <= beta_end"),
                                    ({"beta_start": -0.5, "beta_end": 1.5, "beta_schedule": "cosine"}, "beta_start")])
def test_schedule_refuses_bad_betas(kw, arg):
    with pytest.raises(ValueError, match=arg):
        FastDDPMSchedule(**kw)


def test_schedule_accepts_numpy_betas():
    s = FastDDPMSchedule(beta_start=np.float32(1e-4), beta_end=np.float64(0.02))
    assert torch.isfinite(s.alphas_cumprod).all()


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -0.1])
def test_ddim_step_refuses_bad_eta(eta):
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ddim_step(x, x, 999, 899, schedule=FastDDPMSchedule(), eta=eta, seed=0)


def _trainer_timesteps(S):
    """The official trainer's non-uniform list (float32 torch.linspace), as its training loop has it."""
    n1, n2 = int(S * 0.4), int(S * 0.6)
    a = torch.ceil(torch.linspace(0, 699, n1 + 1)[:-1])
    b = torch.ceil(torch.linspace(699, 999, n2))
    return torch.cat((a, b)).long()


def test_schedule_docstring_lists_where_trainer_and_sampler_differ():
    differ = {S for S in range(2, 1001) if S != 10 and not torch.equal(
        schedule_mod.fast_ddpm_timesteps("non-uniform", S, 1000), _trainer_timesteps(S))}
    assert len(differ) == 45 and 203 in differ
    doc = " ".join(schedule_mod.__doc__.split())
    m = re.search(r"differ for (\d+) values of S: \{([\d, ]+)\}", doc)
    assert m, "the schedule docstring no longer states where the trainer and sampler lists differ"
    assert int(m.group(1)) == len(differ) and {int(v) for v in m.group(2).split(",")} == differ


def _step_backends():
    return [b for b in _backends("ddim_step") if b != "auto"]


@pytest.mark.parametrize("backend", _step_backends())
def test_steps_are_differentiable(backend):
    sched = FastDDPMSchedule()
    g = torch.Generator().manual_seed(0)
    shape = (2, 2, 3, 5)
    x, e, z = (torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    t, tn = torch.tensor([999, 500]), torch.tensor([899, -1])

    def ddim(x, e, z):
        return ddim_step(x, e, t, tn, schedule=sched, eta=0.7, noise=z, return_x0=True, backend=backend)

    def ddpm(x, e, z):  # x * 3: some x0 fall outside the clip, where the gradient is 0
        return ddpm_step(x * 3, e, t, tn, schedule=sched, noise=z, clip=1.0, return_x0=True, backend=backend)

    assert torch.autograd.gradcheck(ddim, (x, e, z))
    assert torch.autograd.gradcheck(ddpm, (x, e, z))
    # seeded noise and float32: backward runs and matches the reference chain's autograd
    xf, ef = (v.detach().float().requires_grad_() for v in (x, e))
    out = ddim_step(xf, ef, t, tn, schedule=sched, eta=0.5, seed=3, backend=backend)
    out.square().sum().backward()
    xr, er = (v.detach().double().requires_grad_() for v in (x, e))
    zr = ref.normal_ref(shape, 3, 0).double()
    want, _ = ref.ddim_step_ref(xr, er, t, tn, sched.alpha_table(), 0.5, zr)
    want.square().sum().backward()
    assert (xf.grad.double() - xr.grad).abs().max().item() <= 1e-5 * xr.grad.abs().max().item()
    assert (ef.grad.double() - er.grad).abs().max().item() <= 1e-5 * er.grad.abs().max().item()


# --- D: the embed command ----------------------------------------------------------------------
_TINY = ["--model", "dcformer-nano", "--input-size", "16", "16", "16", "--hidden-size", "16"]


@pytest.fixture
def volumes(tmp_path, nib):
    rng = np.random.default_rng(0)
    ct = rng.normal(size=(12, 14, 10)).astype(np.float32) * 300 - 300
    ct[:2] = -1000.0  # air
    mr = (rng.random((12, 14, 10)) * 800).astype(np.float32)
    pet = (rng.random((12, 14, 10)) * 8).astype(np.float32)  # SUV
    folder = tmp_path / "vols"
    folder.mkdir()
    out = {}
    for name, data in (("ct", ct), ("mr", mr), ("pet", pet)):
        out[name] = _write(nib, folder / f"{name}.nii.gz", data, np.diag([0.8, 0.8, 2.0, 1.0]))
    out["folder"] = folder
    return out


def _embed(argv):
    from medkernels.__main__ import main

    try:
        return main(["embed", *[str(a) for a in argv]])
    except SystemExit as e:
        return e.code


def test_embed_help_lists_models_backends_and_preprocessing(capsys):
    assert _embed(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for word in ("dcformer-nano", "dcformer-small", "dcformer-base", "triton", "cpu", "reference", "--modality",
                 "HU window -1000..1000", "z-score", "SUV", "--seed", "--output", "RAS", "resample"):
        assert word in out, word


@pytest.mark.parametrize("argv,arg", [(["--model", "foo"], "--model"), (["--backend", "bogus"], "--backend"),
                                      (["--hidden-size", "0"], "--hidden-size"),
                                      (["--input-size", "0", "16", "16"], "--input-size"),
                                      (["--weights", "missing.pt"], "--weights"),
                                      (["--output", "emb.csv"], "--output"), (["--modality", "xray"], "--modality"),
                                      (["--seed", "-1"], "--seed"), (["--pet-weight", "70"], "--pet-dose")])
def test_embed_bad_arguments_end_in_one_line_and_exit_2(volumes, capsys, argv, arg):
    assert _embed([volumes["ct"], *_TINY, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and arg in err, err


def test_embed_unreadable_weights(volumes, tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert _embed([volumes["ct"], *_TINY, "--weights", tmp_path / "junk.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "cannot read --weights" in err


@pytest.mark.parametrize("modality,wrong", [("ct", "mr"), ("mr", "ct"), ("pet", "ct")])
def test_embed_warns_when_intensities_do_not_fit_the_modality(volumes, capsys, modality, wrong):
    assert _embed([volumes[modality], *_TINY, "--modality", modality]) == 0
    assert "warning" not in capsys.readouterr().err
    assert _embed([volumes[modality], *_TINY, "--modality", wrong]) == 0
    err = capsys.readouterr().err
    assert f"do not look like {wrong.upper()}" in err and "--modality" in err


def test_embed_pet_weight_and_dose(volumes, tmp_path, nib, capsys):
    raw = _write(nib, tmp_path / "bq.nii", (np.asarray(nib.load(str(volumes["pet"])).dataobj) * 4000).astype(
        np.float32), np.eye(4))  # Bq/mL for 350 MBq into 70 kg: SUV = value * 70000 / 3.5e8 = value / 5000
    assert _embed([raw, *_TINY, "--modality", "pet"]) == 0
    assert "do not look like PET SUV" in capsys.readouterr().err
    assert _embed([raw, *_TINY, "--modality", "pet", "--pet-weight", "70", "--pet-dose", "350"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_normalize_intensity_per_modality():
    from medkernels.io import normalize_intensity

    x = torch.linspace(-2000, 3000, 1001).reshape(1, 7, 11, 13)
    ct, _ = normalize_intensity(x, "ct")
    assert float(ct.min()) == 0.0 and float(ct.max()) == 1.0
    assert torch.allclose(ct[(x > -1000) & (x < 1000)], (x[(x > -1000) & (x < 1000)] + 1000) / 2000)
    mr, step = normalize_intensity(x, "mr")
    assert abs(float(mr.double().mean())) < 1e-5 and abs(float(mr.double().std(unbiased=False)) - 1) < 1e-5
    assert "zscore" in step
    pet, _ = normalize_intensity(torch.tensor([-1.0, 0.0, 5.0, 10.0, 50.0]), "pet", suv_factor=2.0)
    assert torch.allclose(pet, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    nan = x.clone()
    nan.view(-1)[5] = float("nan")
    for modality in ("ct", "mr", "pet"):
        y, _ = normalize_intensity(nan, modality)
        assert torch.isnan(y).sum() == 1 and torch.isfinite(y).sum() == y.numel() - 1


def test_embed_seed_and_output(volumes, tmp_path):
    outs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert _embed([volumes["ct"], *_TINY, "--seed", seed, "--output", tmp_path / f"{name}.pt"]) == 0
        outs[name] = torch.load(tmp_path / f"{name}.pt")
    assert outs["a"]["embeddings"].shape == (1, 16)
    assert torch.equal(outs["a"]["embeddings"], outs["b"]["embeddings"])
    assert not torch.equal(outs["a"]["embeddings"], outs["c"]["embeddings"])
    assert outs["a"]["seed"] == 1 and outs["a"]["trained"] is False and outs["a"]["files"] == [str(volumes["ct"])]
    assert _embed([volumes["ct"], *_TINY, "--seed", 1, "--output", tmp_path / "sub" / "a.npy"]) == 0
    arr = np.load(tmp_path / "sub" / "a.npy")
    assert arr.dtype == np.float32 and np.array_equal(arr, outs["a"]["embeddings"].numpy())


def test_embed_folder_batch_with_progress_bar(volumes, tmp_path, capsys):
    assert _embed([volumes["folder"], *_TINY, "--modality", "mr", "--output", tmp_path / "all.npy"]) == 0
    err = capsys.readouterr().err
    assert "embed" in err and "3/3" in err  # the tqdm bar
    arr = np.load(tmp_path / "all.npy")
    files = (tmp_path / "all.npy.files.txt").read_text().split()
    assert arr.shape == (3, 16) and [f.split("/")[-1] for f in files] == ["ct.nii.gz", "mr.nii.gz", "pet.nii.gz"]
    assert _embed([volumes["mr"], *_TINY, "--modality", "mr", "--output", tmp_path / "mr.npy"]) == 0
    assert np.allclose(np.load(tmp_path / "mr.npy")[0], arr[1], atol=1e-6)
    (volumes["folder"] / "broken.nii").write_bytes(b"junk" * 20)
    assert _embed([volumes["folder"], *_TINY, "--output", tmp_path / "some.pt"]) == 2
    assert "1 of 4 volumes could not be read" in capsys.readouterr().err
    assert torch.load(tmp_path / "some.pt")["embeddings"].shape == (3, 16)


# --- E: the benchmark suite says how to get its chart --------------------------------------------
@pytest.fixture
def quick_bench(monkeypatch):
    """python -m medkernels.bench with no cases and a canned roofline: the reporting path only."""
    from medkernels.bench import __main__ as bench_main
    from medkernels.bench import harness

    monkeypatch.setattr(harness, "measure_roofline",
                        lambda device: harness.Roofline("cpu (test)", 1.0, 1.0, {"flops_dtype": "fp32"}))
    return bench_main


def test_bench_says_how_to_get_the_chart_without_matplotlib(quick_bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert quick_bench.main(["--only", "none", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "cpu-default.json").is_file() and not (tmp_path / "cpu-default.png").exists()
    assert "no chart: matplotlib is not installed" in out and "pip install matplotlib" in out
    assert f"--plot {tmp_path / 'cpu-default.json'}" in out
    assert quick_bench.main(["--plot", str(tmp_path / "cpu-default.json")]) == 1
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_bench_plot_draws_a_past_run(quick_bench, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from medkernels.bench import harness

    rows = [{"op": "q_sample", "shape": "2x1x8x8", "dtype": "float32", "provider": "cpu", "speedup": 3.0, "ms": 1.0}]
    path = harness.write_results(rows, harness.Roofline("cpu (test)", 1.0, 1.0), tmp_path, "run")
    assert quick_bench.main(["--plot", str(path)]) == 0
    assert (tmp_path / "run.png").stat().st_size > 0 and "chart:" in capsys.readouterr().out
    assert quick_bench.main(["--plot", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("kw,arg", [({"eta": float("nan")}, "eta"), ({"eta": -0.5}, "eta"),
                                    ({"clip": float("nan")}, "clip"), ({"clip": 0.0}, "clip")])
def test_sampler_refuses_bad_eta_and_clip(kw, arg):
    from medkernels.diffusion import FastDDPMSampler

    with pytest.raises(ValueError, match=f"{arg} must be"):
        FastDDPMSampler(lambda x, t: x, FastDDPMSchedule(), **kw)
    FastDDPMSampler(lambda x, t: x, FastDDPMSchedule(), eta=np.float32(0.5), clip=np.float32(1.0))


def test_io_and_embed_help_do_not_import_nibabel():
    import subprocess

    code = ("import sys; sys.modules['nibabel'] = None\n"
            "import medkernels.io, medkernels.__main__ as m\n"
            "try:\n    m.main(['embed', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "try:\n    medkernels.io.load_volume('x.nii')\nexcept ImportError as e:\n    print('LAZY', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LAZY reading and writing NIfTI needs nibabel" in out.stdout
