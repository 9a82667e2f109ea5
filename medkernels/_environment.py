"""Every ``MEDKERNELS_*`` environment variable is read here, and nowhere else.

Runtime variables (build-time ones are read by ``setup.py``):

``MEDKERNELS_EXTENDED_TESTS``  ``1`` adds the large shapes and seeded sweeps to the test suite.
``MEDKERNELS_TRITON_INTERPRET`` ``auto`` (default): run Triton kernels in the interpreter when no
                               GPU is present; ``1`` always; ``0`` never.
``MEDKERNELS_DEFAULT_BACKEND`` the backend ``backend="auto"`` resolves through (default ``auto``).
"""

from __future__ import annotations

import os


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


EXTENDED_TESTS: bool = _flag("MEDKERNELS_EXTENDED_TESTS")
TRITON_INTERPRET_MODE: str = os.environ.get("MEDKERNELS_TRITON_INTERPRET", "auto").strip().lower()
DEFAULT_BACKEND: str = os.environ.get("MEDKERNELS_DEFAULT_BACKEND", "auto").strip().lower()


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
    return use


TRITON_INTERPRETED: bool = configure_triton_interpreter()
