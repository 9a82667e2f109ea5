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


def cases(device: torch.device, full: bool):
    if device.type == "cpu":
        yield _forward_case("small", (1, 1, 64, 128, 128), device, note="issue target: >=2x reference")
        yield _forward_case("small", (1, 1, 128, 256, 256), device, note="Med3DVLM's input, on CPU")
        yield _train_case("small", (2, 1, 32, 64, 64), device)
        yield _clip_case("nano", (2, 1, 32, 64, 64), device)
        return
    yield _forward_case("small", (1, 1, 128, 256, 256), device, note="issue target: >=2x reference")
    yield _forward_case("small", (2, 1, 128, 256, 256), device)
    yield _train_case("small", (1, 1, 128, 256, 256), device)
    yield _clip_case("small", (2, 1, 128, 256, 256), device)
