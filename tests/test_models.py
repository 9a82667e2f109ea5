"""Models I: DCFormer encoder, DCFormer CLIP, Med3DVLM projector, NIfTI io, the embed command.

Oracle: ``medkernels.reference.models`` (stock nn layers with the official keys) run in float64.
Small shapes (the nano variant, 32^3-ish volumes) keep this file fast on a loaded 2-core CPU.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from medkernels import _environment
from medkernels._extension import extension
from medkernels.models import DCFORMER_CONFIGS, ByteTokenizer, DCFormerCLIP, Med3DVLM, TextTransformer, dcformer
from medkernels.models.clip import CT_RATE_PATHOLOGIES, clip_softmax_loss, siglip_loss, zero_shot_probabilities
from medkernels.models.med3dvlm import MixerLowHighHybridMLP
from medkernels.nn import DecompConv3d
from medkernels.reference.models import (
    DCFormerRef,
    MixerLowHighHybridMLPRef,
    clip_softmax_loss_ref,
    med3dvlm_sigmoid_loss_ref,
)
from medkernels.testing import RTOL, assert_close, rel_err

VARIANTS = list(DCFORMER_CONFIGS)
_CPU_MISSING = extension.missing_reason("decomp_conv_fwd_cpu", "the C++ CPU kernels")
BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(_CPU_MISSING is not None, reason=str(_CPU_MISSING))),
            "reference", "auto"]
# the model tests below run the C++ kernels when built, else the reference backend
FAST = "cpu" if _CPU_MISSING is None else "reference"


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BN statistics (the official init leaves BN at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if hasattr(m, "gamma") and isinstance(m.gamma, nn.Parameter):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) * 0.5 + 0.25)
    return model


def _pair(variant="nano", backend=FAST, layout="dcformer"):
    torch.manual_seed(0)
    ref = _randomise(DCFormerRef(*DCFORMER_CONFIGS[variant], layout=layout))
    ours = dcformer(variant, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


# --- parameter counts and keys -------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_and_keys(variant):
    ours = dcformer(variant)
    ref = DCFormerRef(*DCFORMER_CONFIGS[variant])
    med = DCFormerRef(*DCFORMER_CONFIGS[variant], layout="med3dvlm")
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in med.parameters())
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert set(med.state_dict()) < set(ours.state_dict())  # Med3DVLM stores each BN once
    ours.load_state_dict(med.state_dict(), strict=True)


def test_param_counts_known():
    # independent of the re-creation: totals of the official configs (stem + stages, BN affine included)
    counts = {v: sum(p.numel() for p in dcformer(v).parameters()) for v in ("nano", "small")}
    assert counts == {"nano": 789216, "small": 18244800}


# --- outputs equal the plain-PyTorch re-creation ----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_matches_reference(mode, backend):
    """Every stage's output vs the float64 re-creation: at most 4x the float32 re-creation's own
    error plus the float32 tolerance (train mode normalises tiny late stages by batch statistics
    of few values, which amplifies any fp32 accumulation-order difference alike)."""
    ours, ref = _pair(backend=backend)
    ref64 = copy.deepcopy(ref).double()
    for m in (ours, ref, ref64):
        m.train(mode == "train")
    x = torch.randn(2, 1, 32, 40, 24)
    with torch.no_grad():
        got, own, want = ours(x), ref(x), ref64(x.double())
    assert len(got) == 5
    for s, (a, r, b) in enumerate(zip(got, own, want)):
        assert a.shape == b.shape, (s, a.shape, b.shape)
        err, tol = rel_err(a.double(), b), 4 * rel_err(r.double(), b) + RTOL[torch.float32]
        assert err <= tol, f"{mode}-{backend} stage {s}: relative error {err:.3e} > {tol:.3e}"
    if mode == "train":  # running statistics updated as BatchNorm3d does
        sd64 = ref64.state_dict()
        for name, a in ours.state_dict().items():
            if "running" in name:
                assert rel_err(a.double(), sd64[name]) < 1e-4, name


def test_token_layout_and_multiscale_shapes():
    ours, ref = _pair()
    ours.eval()
    ref.eval()
    x = torch.randn(1, 1, 64, 64, 128)  # D, H, W
    toks = ours(x)
    widths = DCFORMER_CONFIGS["nano"][1]
    # (H, W, D) permuted, /4 stem then /2 per stage: tokens = prod of the sizes
    expect = [(16 * 32 * 16), (8 * 16 * 8), (4 * 8 * 4), (2 * 4 * 2), (1 * 2 * 1)]
    assert [tuple(t.shape) for t in toks] == [(1, n, c) for n, c in zip(expect, widths)]
    with torch.no_grad():
        want = ref(x)
    assert max(rel_err(a, b) for a, b in zip(toks, want)) < 1e-5


def test_backward_matches_reference():
    """Train-mode gradients of every parameter, our model run in float64 against the float64
    re-creation (in float32 the BN-weight gradients of a random deep net are too ill-conditioned
    to judge: the float32 re-creation itself is off by up to 1e-2)."""
    ours, ref = _pair(backend=FAST)
    ours, ref = ours.double(), ref.double()
    x = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64)
    g = [torch.randn(t.shape, dtype=torch.float64) for t in ref(x)]
    grads = []
    for model in (ours, ref):
        model.train()
        model.zero_grad()
        sum((t * gi).sum() for t, gi in zip(model(x), g)).backward()
        grads.append(dict(model.named_parameters()))
    for name, p in grads[0].items():
        want = grads[1][name].grad
        if want.abs().max() < 1e-7:  # conv bias right before a train-mode BN: exactly 0
            assert p.grad.abs().max() < 1e-6, name
            continue
        err = rel_err(p.grad, want)
        assert err < 1e-8, f"grad {name}: relative error {err:.3e}"


def test_sum_backward_stride0():
    ours, _ = _pair(backend=FAST)
    ours.train()
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    ours(x)[-1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_input_error():
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        dcformer("nano")(torch.randn(1, 2, 32, 32, 32))


@pytest.mark.parametrize("c_in,c_out,k,stride,size,channels_last", [
    (9, 12, 3, 1, (5, 7, 6), True), (9, 16, 5, 1, (4, 9, 3), False),
    (1, 16, 7, 4, (13, 9, 22), False), (2, 16, 7, 4, (5, 6, 7), True)])
def test_stem_layers_eval_path(c_in, c_out, k, stride, size, channels_last):
    """The stem's dense layers in eval: folded BN through ``auto`` (the C++ dense tap kernel on
    CPU) equal the float64 module; the folded weights are cached and the cache follows BN changes."""
    from medkernels.models.dcformer import run_decomp

    conv = _randomise(DecompConv3d(c_in, c_out, k, stride=stride, groups=1)).eval()
    x = torch.randn(2, c_in, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    want = conv.double()(x.double())
    conv.float()
    with torch.no_grad():
        got = run_decomp(conv, x)
        again = run_decomp(conv, x)  # the cached folded weights
    assert_close(f"stem-cin{c_in}-k{k}-s{stride}", got, want)
    assert torch.equal(got, again)
    with torch.no_grad():
        conv.c2[1].running_mean.add_(1.0)  # changed statistics invalidate the cache
        assert not torch.equal(run_decomp(conv, x), got)


# --- the two checkpoint layouts ----------------------------------------------------------------
def test_dcformer_layout_with_vq_loads_strict():
    ours, ref = _pair()
    sd = dict(ref.state_dict())
    sd["vq._codebook.embed"] = torch.randn(1, 16, 256)
    fresh = dcformer("nano")
    fresh.load_state_dict(sd, strict=True)
    assert "vq._codebook.embed" in fresh.unused_state
    for k, v in ours.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_med3dvlm_layout_loads_strict_and_gives_same_model():
    ours, ref = _pair()
    med = DCFormerRef(*DCFORMER_CONFIGS["nano"], layout="med3dvlm")
    med.load_state_dict({k: v for k, v in ref.state_dict().items() if ".norm." not in k}, strict=True)
    sd = med.state_dict()
    assert not any(".norm." in k for k in sd)
    # Med3DVLM-style layer scale name accepted too
    sd = {k.replace(".gamma", ".scale"): v for k, v in sd.items()}
    fresh = dcformer("nano", backend=FAST)
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    ours.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(fresh(x), ours(x)):
            assert torch.equal(a, b)


def test_load_official_state_dict_prefixes():
    _, ref = _pair()
    clip_sd = {"vision_encoder." + k: v for k, v in ref.state_dict().items()}
    clip_sd["mm_vision_proj.weight"] = torch.zeros(4, 4)
    want = ref.state_dict()
    for what, sd in {"CLIP (vision_encoder.*)": clip_sd, "DecompModel (encoder.*)": want,
                     "bare encoder (s0.*)": ref.encoder.state_dict()}.items():
        model = dcformer("nano")
        assert any(not torch.equal(v, want[k]) for k, v in model.state_dict().items()), "fresh model equals ref"
        model.load_official_state_dict(sd)
        got = model.state_dict()
        assert got.keys() == want.keys(), what
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"{what}: {len(bad)} tensors not loaded, e.g. {bad[:3]}"
    with pytest.raises(RuntimeError, match="Unexpected key"):
        dcformer("nano").load_official_state_dict({**want, "encoder.extra.weight": torch.zeros(1)})


# --- Med3DVLM projector ---------------------------------------------------------------------------
def test_projector_matches_reference_and_keys():
    kw = dict(low_input_size=(8, 16), low_output_size=(6, 4), high_input_size=(2, 32), high_output_size=(3, 4),
              output_dim=64)
    ref = _randomise(MixerLowHighHybridMLPRef(**kw)).double()
    ours = MixerLowHighHybridMLP(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = (torch.randn(3, 8, 16), torch.randn(3, 2, 32))
    got = ours(x)
    want = ref((x[0].double(), x[1].double()))
    assert got.shape == (3, 8, 64)
    assert_close("projector", got, want)
    full_ref, full = MixerLowHighHybridMLPRef(), MixerLowHighHybridMLP()
    assert set(full.state_dict()) == set(full_ref.state_dict())
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in full_ref.parameters())
    with pytest.raises(ValueError, match="MixerLayer expects"):
        ours((torch.randn(1, 7, 16), x[1][:1]))


def test_med3dvlm_visual_tokens_and_inputs_embeds():
    vlm = Med3DVLM("nano", input_size=(64, 64, 64), llm_dim=32).eval()
    imgs = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        vis = vlm.encode_images(imgs)
        assert vis.shape == (2, 256, 32)
        emb = nn.Embedding(100, 32)
        # Med3DVLM: the visual tokens replace positions 1..256, after the first token
        ids = torch.randint(1, 100, (2, 260))
        e, mask = vlm.prepare_inputs_embeds(ids, imgs, torch.ones(2, 260, dtype=torch.long), embed_tokens=emb)
        assert e.shape == (2, 260, 32) and mask.shape == (2, 260)
        assert torch.equal(e[:, :1], emb(ids[:, :1])) and torch.equal(e[:, 1:257], vis)
        assert torch.equal(e[:, 257:], emb(ids[:, 257:]))
        with pytest.raises(ValueError, match="length >= 257"):
            vlm.prepare_inputs_embeds(ids[:, :200], imgs, embed_tokens=emb)
        vlm.image_token_id = 7
        ids = torch.cat([torch.full((2, 256), 7), torch.randint(8, 100, (2, 3))], dim=1)
        e, _ = vlm.prepare_inputs_embeds(ids, imgs, embed_tokens=emb)
        assert torch.equal(e[:, :256], vis) and torch.equal(e[:, 256:], emb(ids[:, 256:]))
        with pytest.raises(ValueError, match="exactly 256 image tokens"):
            vlm.prepare_inputs_embeds(ids[:, 1:], imgs, embed_tokens=emb)


def test_med3dvlm_official_checkpoint_keys_load():
    """The official LLM checkpoint holds the tower at ``model.vision_tower.vision_tower.*`` (a
    DecompModel: ``encoder.*``, BN once per branch) and the mixer at ``model.mm_projector.*``."""
    src = _randomise(Med3DVLM("nano", input_size=(64, 64, 64), llm_dim=32)).eval()
    keys = set(src.state_dict())
    assert any(k.startswith("vision_tower.vision_tower.encoder.s0.0.0.c1.0.") for k in keys)
    assert any(k.startswith("mm_projector.low_mixer.0.") for k in keys)
    ckpt = {f"model.{k}": v for k, v in src.state_dict().items() if ".norm." not in k}  # Med3DVLM stores BN once
    ckpt.update({"model.embed_tokens.weight": torch.randn(10, 32), "lm_head.weight": torch.randn(10, 32),
                 "model.layers.0.self_attn.q_proj.weight": torch.randn(32, 32)})
    dst = Med3DVLM("nano", input_size=(64, 64, 64), llm_dim=32).eval()
    dst.load_official_state_dict(ckpt, strict=True)
    imgs = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert_close("visual tokens", dst.encode_images(imgs), src.encode_images(imgs).double())
    # a stage-1 projector file: only model.mm_projector.*
    proj_only = Med3DVLM("nano", input_size=(64, 64, 64), llm_dim=32)
    proj_only.load_official_state_dict({k: v for k, v in ckpt.items() if k.startswith("model.mm_projector.")})
    for k, v in src.mm_projector.state_dict().items():
        assert torch.equal(proj_only.mm_projector.state_dict()[k], v), k


# --- CLIP -------------------------------------------------------------------------------------------
def _tiny_clip(loss_type="sigmoid"):
    torch.manual_seed(0)
    return DCFormerCLIP("nano", text_encoder=TextTransformer(dim=32, depth=1, heads=2), hidden_size=16,
                        loss_type=loss_type, backend=FAST)


def test_clip_keys_and_defaults():
    m = DCFormerCLIP("nano", text_encoder=TextTransformer(dim=32, depth=1, heads=2))
    keys = set(m.state_dict())
    assert {"t_prime", "bias", "mm_vision_proj.weight", "mm_language_proj.weight"} <= keys
    assert any(k.startswith("vision_encoder.encoder.s0.") for k in keys)
    assert abs(m.t_prime.item() - math.log(1 / 0.07)) < 1e-6 and m.bias.item() == 0.0
    assert m.mm_vision_proj.out_features == 512 and m.input_size == (128, 256, 256)


@pytest.mark.parametrize("loss_type", ["sigmoid", "nce"])
def test_clip_loss_and_grads_equal_reference(loss_type):
    m = _tiny_clip(loss_type)
    img = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=-1).requires_grad_()
    with torch.no_grad():
        if loss_type == "sigmoid":
            m.bias.fill_(-1.5)
    params = [m.t_prime, m.bias] if loss_type == "sigmoid" else [m.logit_scale]
    loss = m.loss(img.float(), txt.float())
    got = torch.autograd.grad(loss, [img, txt, *params])
    p64 = [p.detach().double().requires_grad_() for p in params]
    if loss_type == "sigmoid":
        want_loss = med3dvlm_sigmoid_loss_ref(img, txt, *p64)
    else:
        want_loss = clip_softmax_loss_ref(img, txt, *p64)
    want = torch.autograd.grad(want_loss, [img, txt, *p64])
    assert_close(f"{loss_type}-loss", loss.detach().reshape(1), want_loss.detach().reshape(1), dtype=torch.float32)
    for name, a, b in zip(["img", "txt", "p0", "p1"], got, want):
        err = rel_err(a.double(), b)
        assert err < 1e-4, f"{loss_type} grad {name}: {err:.3e}"


def test_clip_loss_helpers_agree():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t, b = torch.tensor(2.0), torch.tensor(-1.0)
    assert rel_err(siglip_loss(img, txt, t, b, backend="reference"), med3dvlm_sigmoid_loss_ref(img, txt, t, b)) < 1e-5
    assert rel_err(clip_softmax_loss(img, txt, t), clip_softmax_loss_ref(img, txt, t)) < 1e-6


def test_zero_shot_probabilities():
    m = _tiny_clip().eval()
    tok = ByteTokenizer()
    imgs = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        p = m.zero_shot(imgs, tok)
        assert p.shape == (2, 18) and bool(((p > 0) & (p < 1)).all())
        # by hand for one pathology: softmax over the pair of e * cos
        name = CT_RATE_PATHOLOGIES[4]
        t = tok([f"{name} is present.", f"{name} is not present."])
        txt = m.encode_text(t["input_ids"], t["attention_mask"])
        sims = math.e * m.encode_image(imgs) @ txt.T
        assert torch.allclose(p[:, 4], sims.softmax(-1)[:, 0], atol=1e-6)
        q = zero_shot_probabilities(m, imgs, tok, pathologies=["Cardiomegaly"])
        assert q.shape == (2, 1)
    assert len(CT_RATE_PATHOLOGIES) == 18 and len(set(CT_RATE_PATHOLOGIES)) == 18


def test_clip_training_step_lowers_loss():
    """A few SGD steps on 4 synthetic (volume, report) pairs lower the loss monotonically. Scale
    e^t' = 1 here: at the official e^t' = 14.3 a randomly initialised tower's near-identical
    embeddings make the first steps overshoot (the gradients themselves check out by finite
    differences)."""
    torch.manual_seed(0)
    m = DCFormerCLIP("nano", text_encoder=TextTransformer(dim=32, depth=1, heads=2), hidden_size=16, t_prime=0.0,
                     backend=FAST)
    m.train()
    torch.manual_seed(1)
    imgs = torch.randn(4, 1, 16, 32, 32) * 0.1 + torch.arange(4.0).reshape(4, 1, 1, 1, 1)
    tok = ByteTokenizer()(["left lung nodule", "cardiomegaly", "pleural effusion", "no finding"])
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        out = m(imgs, tok["input_ids"], tok["attention_mask"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


# --- NIfTI io ----------------------------------------------------------------------------------------
nib = pytest.importorskip("nibabel")


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_nifti_round_trip_keeps_data_and_affine(tmp_path):
    from medkernels.io import load_volume, save_volume

    data = np.random.default_rng(0).normal(size=(7, 9, 5)).astype(np.float32)
    aff = np.diag([0.7, 0.8, 2.0, 1.0])
    aff[:3, 3] = [-10.0, 20.0, 3.5]
    src = _write(tmp_path / "a.nii.gz", data, aff)
    x, meta = load_volume(src)
    assert x.shape == (1, 7, 9, 5) and np.allclose(x[0].numpy(), data) and np.allclose(meta.affine, aff)
    save_volume(x, meta, tmp_path / "b.nii")
    back = nib.load(str(tmp_path / "b.nii"))
    assert np.allclose(back.get_fdata(), data) and np.allclose(back.affine, aff)


def test_nifti_ras_crop_pad_resample_stay_aligned(tmp_path):
    from medkernels.io import load_volume, save_volume

    data = np.arange(6 * 8 * 4, dtype=np.float32).reshape(6, 8, 4)
    aff = np.diag([-1.0, -1.5, 2.0, 1.0])  # LPS-ish: reoriented to RAS on load
    aff[:3, 3] = [5.0, 7.0, -2.0]
    src = _write(tmp_path / "lps.nii", data, aff)
    x, meta = load_volume(src, crop_or_pad=(4, 10, 4))
    assert np.all(np.diag(meta.affine)[:3] > 0)
    # every kept voxel: its world position maps back to the original voxel with the same value
    inv = np.linalg.inv(aff)
    for idx in [(0, 1, 0), (3, 8, 3), (2, 5, 1)]:
        world = meta.affine @ np.array([*idx, 1.0])
        i, j, k = np.rint(inv @ world)[:3].astype(int)
        if 0 <= i < 6 and 0 <= j < 8 and 0 <= k < 4:
            assert x[0][idx].item() == data[i, j, k]
        else:
            assert x[0][idx].item() == 0.0
    save_volume(x, meta, tmp_path / "out.nii.gz")
    y, meta2 = load_volume(tmp_path / "out.nii.gz")
    assert torch.equal(x, y) and np.allclose(meta.affine, meta2.affine)
    r, rmeta = load_volume(src, shape=(11, 15, 7), hu_window=(0.0, 200.0))
    assert r.shape == (1, 11, 15, 7) and float(r.min()) >= 0 and float(r.max()) <= 1
    corner = rmeta.affine @ np.array([10, 14, 6, 1.0])
    assert np.allclose(corner, meta.original_affine @ np.array([0, 0, 0, 1.0])) or np.allclose(
        corner, nib.as_closest_canonical(nib.load(str(src))).affine @ np.array([5, 7, 3, 1.0]))
    m, _ = load_volume(src, minmax=True, spacing=(2.0, 2.0, 2.0))
    assert float(m.min()) == 0.0 and float(m.max()) == 1.0


def test_nifti_bad_files(tmp_path):
    from medkernels.io import VolumeError, load_volume

    with pytest.raises(FileNotFoundError):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="expected a NIfTI file"):
        load_volume(tmp_path / "notes.txt")
    with pytest.raises(VolumeError, match="directory"):
        (tmp_path / "d.nii").mkdir()
        load_volume(tmp_path / "d.nii")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(VolumeError, match="cannot read"):
        load_volume(tmp_path / "junk.nii")
    good = _write(tmp_path / "g.nii", np.ones((8, 8, 8), np.float32), np.eye(4))
    (tmp_path / "trunc.nii").write_bytes(good.read_bytes()[:600])
    with pytest.raises(VolumeError, match="corrupt or truncated|cannot read"):
        load_volume(tmp_path / "trunc.nii")
    _write(tmp_path / "flat.nii", np.ones((8, 8), np.float32), np.eye(4))
    with pytest.raises(VolumeError, match="expected a 3D volume.*2D"):
        load_volume(tmp_path / "flat.nii")
    _write(tmp_path / "t.nii", np.ones((4, 4, 4, 3), np.float32), np.eye(4))
    with pytest.raises(VolumeError, match="expected a 3D volume.*4D"):
        load_volume(tmp_path / "t.nii")


def test_embed_command(tmp_path, capsys):
    from medkernels.__main__ import main

    src = _write(tmp_path / "ct.nii.gz", np.random.default_rng(0).normal(size=(20, 24, 16)).astype(np.float32) * 300,
                 np.diag([0.8, 0.8, 2.0, 1.0]))
    assert main(["embed", str(src), "--model", "dcformer-nano", "--input-size", "64", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "embedding: (1, 512)" in out
    assert main(["embed", str(tmp_path / "nope.nii.gz"), "--model", "dcformer-nano"]) == 2
    torch.save(DCFormerCLIP("nano").state_dict(), tmp_path / "clip.pt")
    assert main(["embed", str(src), "--model", "dcformer-nano", "--input-size", "64", "64", "64",
                 "--weights", str(tmp_path / "clip.pt")]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" not in out and "Interlobular septal thickening" in out


@pytest.mark.skipif(not _environment.EXTENDED_TESTS, reason="compiling the whole encoder takes ~80 s on 2 cores; "
                    "set MEDKERNELS_EXTENDED_TESTS=1")
def test_compile_fullgraph_encoder():
    m = dcformer("nano").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        want = m(x)[-1]  # eager first: loads the extension outside the traced region
        got = torch.compile(lambda v: m(v)[-1], fullgraph=True)(x)
    assert torch.equal(got, want)
