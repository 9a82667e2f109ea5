"""Models I end to end: DCFormer-small forward and forward+backward, ours vs the same network
built from plain PyTorch layers (``medkernels.reference.models.DCFormerRef``, same weights), and a
DCFormer CLIP training step.

GPU: Med3DVLM's input 1x1x128x256x256. CPU: the reduced 1x1x64x128x128 forward and the full
input (a few seconds per call), a reduced training step.
"""

from __future__ import annotations

import torch

from medkernels import _environment
from medkernels.bench import Case
from medkernels.models import DCFORMER_CONFIGS, ByteTokenizer, DCFormerCLIP, TextTransformer, dcformer
from medkernels.reference.models import DCFormerRef
from medkernels.testing import rel_err


def _models(variant: str, device, train: bool):
    torch.manual_seed(0)
    ref = DCFormerRef(*DCFORMER_CONFIGS[variant])
    with torch.no_grad():  # non-trivial BN statistics so the folded path does real work
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ours = dcformer(variant)
    ours.load_state_dict(ref.state_dict())
    return ours.to(device).train(train), ref.to(device).train(train)


def _flops(ref, x) -> int:
    """Multiply-adds x 2 of every conv and linear for one forward (hooks on the plain model)."""
    total = [0]

    def conv_hook(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())

    def lin_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in ref.modules() if isinstance(m, torch.nn.Conv3d)]
    hooks += [m.register_forward_hook(lin_hook) for m in ref.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        ref(x)
    for h in hooks:
        h.remove()
    return total[0]


def _forward_case(variant, shape, device, note=""):
    ours, ref = _models(variant, device, train=False)
    x = torch.randn(shape, device=device)

    def run(model):
        def f():
            with torch.inference_mode():
                return model(x)
        return f

    providers = {"auto": run(ours), "reference": run(ref)}
    if device.type == "cuda":
        providers["torch.compile"] = run(torch.compile(ref))

    def check():
        ref64 = DCFormerRef(*DCFORMER_CONFIGS[variant]).to(device)
        ref64.load_state_dict(ref.state_dict())
        ref64 = ref64.double().eval()
        with torch.inference_mode():
            want = ref64(x.double())[-1]
            return {"auto": rel_err(ours(x)[-1], want), "reference": rel_err(ref(x)[-1], want)}

    return Case(op=f"dcformer-{variant} fwd (eval)", shape="x".join(map(str, shape)), dtype=torch.float32,
                providers=providers, flops=_flops(ref, x), check=check, note=note)


def _train_case(variant, shape, device, note=""):
    ours, ref = _models(variant, device, train=True)
    x = torch.randn(shape, device=device)

    def step(model):
        def f():
            model.zero_grad(set_to_none=True)
            out = model(x)
            sum(t.float().square().mean() for t in out).backward()
        return f

    return Case(op=f"dcformer-{variant} fwd+bwd (train)", shape="x".join(map(str, shape)), dtype=torch.float32,
                providers={"auto": step(ours), "reference": step(ref)}, flops=3 * _flops(ref, x), note=note)


def _clip_case(variant, shape, device, note=""):
    torch.manual_seed(0)
    model = DCFormerCLIP(variant, text_encoder=TextTransformer(dim=256, depth=2, heads=4)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(shape, device=device)
    tok = ByteTokenizer(max_length=64)([f"finding {i}: pleural effusion and lung nodule" for i in range(shape[0])])
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)

    def step():
        out = model(x, ids, mask)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def plain():
        # the same model and step with every op on its reference backend (plain PyTorch)
        before = _environment.DEFAULT_BACKEND
        _environment.DEFAULT_BACKEND = "reference"
        try:
            step()
        finally:
            _environment.DEFAULT_BACKEND = before

    return Case(op=f"clip-{variant} train step (sigmoid loss)", shape="x".join(map(str, shape)),
                dtype=torch.float32, providers={"auto": step, "reference": plain}, note=note)


# --- MONAI's DiffusionModelUNet 3D, converted (medkernels.convert) vs as MONAI builds it ----------
def _monai_unet(channels, device):
    try:
        import einops  # noqa: F401  (MONAI's mid-block attention needs it)
        from monai.networks.nets import DiffusionModelUNet
    except ImportError:
        return None
    torch.manual_seed(0)
    return DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels,
                              attention_levels=(False,) * len(channels), num_res_blocks=1,
                              num_head_channels=channels[-1], norm_num_groups=32).to(device)


def _unet_pair(plain, channels, size, device):
    import copy

    import medkernels

    fused = copy.deepcopy(plain)
    report = medkernels.convert(fused)
    x = torch.randn(1, 1, size, size, size, device=device)
    t = torch.tensor([500], device=device)
    shape = f"1x1x{size}^3 ch{'/'.join(map(str, channels))}"
    note = f"convert: {len(report)} modules fused; reference = MONAI's unconverted UNet"

    def fwd(m):
        def f():
            m.eval()
            with torch.inference_mode():
                return m(x, t)
        return f

    def step(m):
        def f():
            m.train()
            m.zero_grad(set_to_none=True)
            m(x, t).square().mean().backward()
        return f

    return (Case(op="MONAI DiffusionModelUNet fwd (eval)", shape=shape, dtype=torch.float32,
                 providers={"reference": fwd(plain), "auto": fwd(fused)}, note=note),
            Case(op="MONAI DiffusionModelUNet train step", shape=shape, dtype=torch.float32,
                 providers={"reference": step(plain), "auto": step(fused)}, note=note))


def _unet_cases(device: torch.device, full: bool):
    # the 32/64/64 UNet at 48^3; full adds a PET-sized 96^3 crop. No rows without monai/einops.
    for channels, size in [((32, 64, 64), 48)] + ([((32, 64, 64), 96)] if full else []):
        plain = _monai_unet(channels, device)
        if plain is None:
            return
        yield from _unet_pair(plain, channels, size, device)


# --- LDM-Morph (issue 15 item 4): one registration training step, ours vs plain-PyTorch layers ---------
def _ldm_morph_case(config, size, device, note="", **overrides):
    import copy

    from medkernels.models import LDMMorphRegistration

    torch.manual_seed(0)
    ours = LDMMorphRegistration(config, **overrides).to(device)
    # the same network and weights with every fused op (window attention, group norm) on its reference
    # backend: MONAI's plain-PyTorch window attention, torch's group norm
    plain = copy.deepcopy(ours).set_backend("reference")
    sd = ours.model.spatial_dims
    g = torch.Generator().manual_seed(0)
    mov, fix = (torch.rand((1, 1) + (size,) * sd, generator=g).to(device) for _ in range(2))
    noise = torch.randn((1, 1) + (size // ours.ldm.factor,) * sd, generator=g).to(device)

    def step(reg):
        opt = torch.optim.Adam(reg.model.parameters(), lr=1e-4)  # the official optimiser

        def f():
            reg.model.train()
            out = reg.loss(mov, fix, noise=noise)  # LDM features, network, warp, hierarchical loss
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        return f

    return Case(op=f"ldm-morph-{config} train step", shape="1x1x" + "x".join([str(size)] * sd), dtype=torch.float32,
                providers={"auto": step(ours), "reference": step(plain)},
                note=note or "reference = the same network on plain PyTorch (reference backends)")


def _ldm_morph_cases(device: torch.device, full: bool):
    if device.type == "cpu":
        yield _ldm_morph_case("official", 32, device, note="official network at a reduced 32x32 on CPU")
        return
    yield _ldm_morph_case("official", 128, device, note="the official 128x128 frames, batch 1")
    if full:
        yield _ldm_morph_case("official", 64, device, spatial_dims=3, note="official widths in 3D (no official 3D)")


def cases(device: torch.device, full: bool):
    if device.type == "cpu":
        yield _forward_case("small", (1, 1, 64, 128, 128), device, note="issue target: >=2x reference")
        yield _forward_case("small", (1, 1, 128, 256, 256), device, note="Med3DVLM's input, on CPU")
        yield _train_case("small", (2, 1, 32, 64, 64), device)
        yield _clip_case("nano", (2, 1, 32, 64, 64), device)
        yield from _unet_cases(device, full)
        yield from _ldm_morph_cases(device, full)
        yield from swincross_cases(device, full)
        yield from _fast_ddpm_cases(device, full)
        return
    yield _forward_case("small", (1, 1, 128, 256, 256), device, note="issue target: >=2x reference")
    yield _forward_case("small", (2, 1, 128, 256, 256), device)
    yield _train_case("small", (1, 1, 128, 256, 256), device)
    yield _clip_case("small", (2, 1, 128, 256, 256), device)
    yield from _unet_cases(device, full)
    yield from _ldm_morph_cases(device, full)
    yield from swincross_cases(device, full)
    yield from _fast_ddpm_cases(device, full)


# --- SwinCross (issue 14 item 1): ours vs the plain-PyTorch re-creation, MONAI SwinUNETR as the peer
def _swincross_models(embed_dim, device, train):
    from medkernels.models import SWINCROSS_CONFIGS, SwinCross
    from medkernels.reference.swincross import SwinCrossRef

    cfg = dict(SWINCROSS_CONFIGS["hecktor"], embed_dim=embed_dim)
    torch.manual_seed(0)
    ref = SwinCrossRef(embed_dim=embed_dim, depths=cfg["depths"], heads=cfg["num_heads"],
                       drop_path_rate=cfg["drop_path_rate"])
    ours = SwinCross(**cfg)
    ours.load_state_dict(ref.state_dict())
    return ours.to(device).train(train), ref.to(device).train(train)


def _swin_unetr_peer(embed_dim, device, train):
    try:
        from monai.networks.nets import SwinUNETR
    except ImportError:
        return None
    torch.manual_seed(0)
    return SwinUNETR(in_channels=2, out_channels=2, feature_size=embed_dim).to(device).train(train)


def _swincross_cases(embed_dim, shape, device, note=""):
    """Forward (eval) and forward+backward (train) rows: auto = ours, reference = the plain
    re-creation of the official modules (same weights), MONAI SwinUNETR(in_channels=2) the peer."""
    size = "x".join(map(str, shape)) + f" C{embed_dim}"
    x = torch.randn(shape, device=device)

    ours, ref = _swincross_models(embed_dim, device, train=False)
    peer = _swin_unetr_peer(embed_dim, device, train=False)

    def fwd(model):
        def f():
            with torch.inference_mode():
                return model(x)
        return f

    providers = {"auto": fwd(ours), "reference": fwd(ref)}
    if peer is not None:
        providers["MONAI SwinUNETR"] = fwd(peer)

    def check():
        import copy

        ref64 = copy.deepcopy(ref).double().eval()
        with torch.inference_mode():
            want = ref64(x.double())
            return {"auto": rel_err(ours(x), want), "reference": rel_err(ref(x), want)}

    yield Case(op="swincross fwd (eval)", shape=size, dtype=torch.float32, providers=providers,
               flops=_flops(ref, x), check=check, note=note)

    ours_t, ref_t = _swincross_models(embed_dim, device, train=True)
    peer_t = _swin_unetr_peer(embed_dim, device, train=True)

    def step(model):
        def f():
            model.zero_grad(set_to_none=True)
            model(x).float().square().mean().backward()
        return f

    providers = {"auto": step(ours_t), "reference": step(ref_t)}
    if peer_t is not None:
        providers["MONAI SwinUNETR"] = step(peer_t)
    yield Case(op="swincross fwd+bwd (train)", shape=size, dtype=torch.float32, providers=providers,
               flops=3 * _flops(ref, x), note=note)


def swincross_cases(device: torch.device, full: bool):
    if device.type == "cpu":  # reduced: 64^3 at half the width (the official depths and heads)
        yield from _swincross_cases(24, (1, 2, 64, 64, 64), device, note="reduced size (official 48 at 96^3)")
        if full:
            yield from _swincross_cases(48, (1, 2, 96, 96, 96), device, note="the official config and crop")
        return
    yield from _swincross_cases(48, (1, 2, 96, 96, 96), device, note="the official config and crop")
    yield from _swincross_cases(48, (2, 2, 96, 96, 96), device)


# --- Fast-DDPM 3D (issue 14 item 2): the 10-step sampler and one training step, ours vs plain layers ----
def _fast_ddpm_cases(device: torch.device, full: bool):
    import copy

    from medkernels.diffusion import FastDDPMSampler, FastDDPMSchedule
    from medkernels.models import FAST_DDPM_DIFFUSION, FastDDPMUNet
    from medkernels.ops import diffusion_loss, q_sample
    from medkernels.reference import diffusion as ref

    if device.type == "cpu":  # reduced: three levels at 24^3, attention at 6^3
        cfg, size, note = dict(ch=32, ch_mult=(1, 2, 2), attn_resolutions=(6,), image_size=24), 24, "reduced on CPU"
    else:
        cfg, size, note = dict(ch=64, ch_mult=(1, 2, 2, 4), attn_resolutions=(16,), image_size=64), 64, ""
    torch.manual_seed(0)
    ours = FastDDPMUNet(out_ch=1, num_res_blocks=1, dropout=0.0, in_channels=2, spatial_dims=3, **cfg).to(device)
    # the same network and weights with every fused op on its reference backend (PyTorch's own
    # group norm, then SiLU): the network a user writes with plain layers
    plain = copy.deepcopy(ours).set_backend("reference")
    sched = FastDDPMSchedule("uniform", 10, **{k: v for k, v in FAST_DDPM_DIFFUSION.items()})
    shape = (1, 1, size, size, size)
    g = torch.Generator().manual_seed(0)
    x_T, cond = (torch.randn(shape, generator=g).to(device) for _ in range(2))
    sampler = FastDDPMSampler(ours.eval(), sched, "ddim", eta=1.0, progress=False, cuda_graph=False)
    plain.eval()
    yield Case(op="fast-ddpm-3d ddim 10-step sampler", shape="x".join(map(str, shape)), dtype=torch.float32,
               providers={"auto": torch.no_grad()(lambda: sampler(x_T, cond, seed=1)),
                          "reference": torch.no_grad()(lambda: ref.fast_ddpm_sample_ref(
                              plain, x_T, cond, sched, "ddim", 1.0, noise_fn=torch.randn_like))},
               note=note or "reference = the same UNet on plain layers, the official eager loop")

    t = torch.tensor([sched.timesteps[3].item()], device=device)
    x0 = torch.randn(shape, generator=g).to(device)

    def step(model, fused):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def f():
            model.train()
            if fused:  # noise regenerated in the kernels from (seed, offset): never stored
                x_t = q_sample(x0, t, schedule=sched, seed=3)
                loss = diffusion_loss(model(torch.cat([cond, x_t], 1), t.float()), x0, t, 3, schedule=sched)
            else:  # the official noise_estimation_loss
                e = torch.randn_like(x0)
                a = sched.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1, 1).float()
                x_t = x0 * a.sqrt() + e * (1.0 - a).sqrt()
                loss = (e - model(torch.cat([cond, x_t], 1), t.float())).square().sum(dim=(1, 2, 3, 4)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f

    yield Case(op="fast-ddpm-3d train step", shape="x".join(map(str, shape)), dtype=torch.float32,
               providers={"auto": step(ours, True), "reference": step(plain, False)},
               note=note or "reference = plain layers and the official loss")
