"""Every ``MEDKERNELS_*`` environment variable is read here, and nowhere else.

Runtime variables (build-time ones are read by ``setup.py``):

``MEDKERNELS_EXTENDED_TESTS``  ``1`` adds the large shapes and seeded sweeps to the test suite.
``MEDKERNELS_TRITON_INTERPRET`` ``auto`` (default): run Triton kernels in the interpreter when no
                               GPU is present; ``1`` always; ``0`` never.
``MEDKERNELS_DEFAULT_BACKEND`` the backend ``backend="auto"`` resolves through (default ``auto``).
``MEDKERNELS_EXPECT_COMPILED`` ``1``: a compiled ``medkernels._C`` is expected (CI sets it after
                               ``pip install -e .``); the test suite then fails instead of dropping
                               the compiled backends from its generated cases.
"""

from __future__ import annotations

import os
import sys


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


EXTENDED_TESTS: bool = _flag("MEDKERNELS_EXTENDED_TESTS")
TRITON_INTERPRET_MODE: str = os.environ.get("MEDKERNELS_TRITON_INTERPRET", "auto").strip().lower()
DEFAULT_BACKEND: str = os.environ.get("MEDKERNELS_DEFAULT_BACKEND", "auto").strip().lower()
EXPECT_COMPILED: bool = _flag("MEDKERNELS_EXPECT_COMPILED")


def _gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_triton_interpreter() -> bool:
    """Set ``TRITON_INTERPRET=1`` before any Triton kernel is defined when no GPU is present.

    Returns whether Triton kernels run in the interpreter in this process.
    """
    if TRITON_INTERPRET_MODE in ("1", "true", "on"):
        use = True
    elif TRITON_INTERPRET_MODE in ("0", "false", "off"):
        use = False
    else:
        use = os.environ.get("TRITON_INTERPRET", "") == "1" or not _gpu_present()
    if use:
        os.environ["TRITON_INTERPRET"] = "1"
        if "triton" in sys.modules:
            _reinterpret_triton_language()
    return use


def _reinterpret_triton_language() -> None:
    """Make an already-imported Triton interpret its own ``@triton.jit`` helpers.

    Triton picks ``JITFunction`` or the interpreter's ``InterpretedFunction`` when a function is
    decorated, so ``triton.language``'s helpers (``tl.zeros``, ``tl.sigmoid``, ``tl.sum``...) were
    fixed as compiled-only if ``triton`` was imported before ``medkernels`` (``import open_clip``,
    ``timm`` and ``diffusers`` do). Calling one from an interpreted kernel then fails with "Cannot
    call @triton.jit'd outside of the scope of a kernel". Wrap each such helper, in every
    ``triton.*`` module that holds it, as the interpreter would have at import time.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    wrapped: dict[int, object] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "triton" or name.startswith("triton.")):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                if id(value) not in wrapped:
                    wrapped[id(value)] = InterpretedFunction(value.fn)
                setattr(module, attr, wrapped[id(value)])


TRITON_INTERPRETED: bool = configure_triton_interpreter()
