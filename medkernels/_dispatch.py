"""Backend dispatch: each backend declares what it can run; dispatch explains its choice.

One ordered tuple, :data:`BACKEND_ORDER`, serves ``backend="auto"`` and
:func:`medkernels.backends`. An op builds a :class:`Dispatcher` from :class:`Backend` entries;
``select`` returns the backend to run or raises an error listing every backend and why it
was refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _environment

BACKEND_ORDER: Tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
BACKEND_CHOICES: Tuple[str, ...] = ("auto",) + BACKEND_ORDER
FLOAT_DTYPES: Tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_NO_REASONS: Callable[..., List[str]] = lambda **_: []


@dataclass(frozen=True)
class Backend:
    """What one backend of one op can do.

    ``machine`` returns why this machine cannot run the backend at all (``None`` if it can);
    ``limits(**inputs)`` returns why these inputs are out of its range; ``auto(**inputs)``
    says whether ``backend="auto"`` may pick it for these inputs (speed, not correctness: a
    backend that ``auto`` skips still computes the same function when asked by name). ``impl``
    is the object that runs it (the op family's backend, see :mod:`medkernels.ops._kit`).
    """

    name: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...] = FLOAT_DTYPES
    machine: Callable[[], Optional[str]] = lambda: None
    limits: Callable[..., List[str]] = _NO_REASONS
    auto: Callable[..., bool] = lambda **_: True
    impl: Any = None

    def not_supported_reasons(self, device: torch.device, dtype: torch.dtype, **inputs) -> List[str]:
        reasons = []
        why = self.machine()
        if why:
            reasons.append(why)
        if device.type not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices) or 'no'} tensors, got a {device.type} tensor")
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"supports dtypes {names}, got {str(dtype).replace('torch.', '')}")
        if not reasons:
            reasons.extend(self.limits(**inputs))
        return reasons


@dataclass
class Dispatcher:
    op: str
    backends: Sequence[Backend]
    _by_name: Dict[str, Backend] = field(init=False)

    def __post_init__(self) -> None:
        order = [b.name for b in self.backends]
        if order != [n for n in BACKEND_ORDER if n in order]:
            raise ValueError(f"{self.op}: backends must follow {BACKEND_ORDER}, got {order}")
        self._by_name = {b.name: b for b in self.backends}
        _REGISTRY[self.op] = self

    def select(self, backend: str, device: torch.device, dtype: torch.dtype, **inputs) -> str:
        """The name of the backend to run, or a ValueError/RuntimeError that says why none fits."""
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"{self.op}: backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        if backend == "auto" and _environment.DEFAULT_BACKEND != "auto":
            backend = _environment.DEFAULT_BACKEND
        if backend != "auto":
            if backend not in self._by_name:
                raise RuntimeError(f"{self.op}: backend {backend!r} is not implemented for this op")
            reasons = self._by_name[backend].not_supported_reasons(device, dtype, **inputs)
            if reasons:
                raise RuntimeError(f"{self.op}: backend {backend!r} cannot run these inputs: " + "; ".join(reasons))
            return backend
        refused = []
        for b in self.backends:
            reasons = b.not_supported_reasons(device, dtype, **inputs)
            if not reasons and not b.auto(device=device, dtype=dtype, **inputs):
                reasons = ["auto prefers another backend for these inputs"]
            if not reasons:
                return b.name
            refused.append(f"  {b.name}: " + "; ".join(reasons))
        raise RuntimeError(f"{self.op}: no backend can run these inputs:\n" + "\n".join(refused))

    def impl(self, name: str):
        """The object that runs backend ``name`` (a name :meth:`select` returned)."""
        return self._by_name[name].impl

    def report(self, device: Optional[torch.device] = None) -> Dict[str, Optional[str]]:
        """Backend name -> ``None`` if usable on ``device`` here, else the reason it is not."""
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        out = {}
        for b in self.backends:
            reasons = [r for r in b.not_supported_reasons(device, torch.float32) if "got" not in r] or (
                [b.machine()] if b.machine() else []
            )
            if device.type not in b.devices:
                reasons.append(f"runs on {'/'.join(b.devices) or 'no'} tensors, not {device.type}")
            out[b.name] = "; ".join(dict.fromkeys(reasons)) or None
        return out


_REGISTRY: Dict[str, Dispatcher] = {}


# --- shared machine checks ----------------------------------------------------------------
def triton_devices() -> Tuple[str, ...]:
    """Triton runs on GPU tensors, and on CPU tensors through the interpreter."""
    return ("cuda", "cpu") if _environment.TRITON_INTERPRETED else ("cuda",)


def triton_machine() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    if not _environment.TRITON_INTERPRETED and not torch.cuda.is_available():
        return "no GPU, and the Triton interpreter is off (MEDKERNELS_TRITON_INTERPRET=0)"
    return None


def triton_auto(device: torch.device, **_) -> bool:
    """The interpreter is a correctness path: auto never picks Triton on CPU tensors."""
    return device.type == "cuda"


def cuda_machine(symbol: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        from ._extension import extension

        why = extension.missing_reason(symbol, "cuda")
        if why:
            return why
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        return None

    return check


@functools.cache
def cpu_vector_isa() -> str:
    """The vector ISA our CPU kernels run on this machine ("avx512", "avx2", "default"; "" without
    the compiled extension). Their tiles are register-blocked for AVX-512's 32 vector registers,
    so CPU ``auto`` rules that were measured on AVX-512 ask for it."""
    from ._extension import extension

    return extension.module.cpu_vector_isa() if extension.has("cpu_vector_isa") else ""


def cpu_machine(symbol: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        from ._extension import extension

        return extension.missing_reason(symbol, "cpu")

    return check


def backends(device: Optional[str] = None) -> Dict[str, Dict[str, Optional[str]]]:
    """Op -> backend -> ``None`` (usable here) or why not, for every registered op."""
    from . import ops  # noqa: F401  (registers every op)

    dev = torch.device(device) if device is not None else None
    return {name: d.report(dev) for name, d in sorted(_REGISTRY.items())}
