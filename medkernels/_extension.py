"""Loads the compiled module ``medkernels._C`` once and says why when it cannot."""

from __future__ import annotations

import importlib
from types import ModuleType


class _Extension:
    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._error: str | None = None
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            self._module = importlib.import_module("medkernels._C")
        except ImportError as exc:  # not built, or built for another Python
            self._error = f"medkernels._C is not importable ({exc}); reinstall with `pip install -e .`"

    @property
    def unavailable_reason(self) -> str | None:
        """``None`` when ``_C`` loaded, otherwise the reason it did not."""
        self._load()
        return self._error

    def has(self, symbol: str) -> bool:
        self._load()
        return self._module is not None and hasattr(self._module, symbol)

    @property
    def module(self) -> ModuleType:
        self._load()
        if self._module is None:
            raise RuntimeError(self._error)
        return self._module

    def build_info(self) -> dict:
        return dict(self.module.build_info) if self.unavailable_reason is None else {}

    def missing_reason(self, symbol: str, what: str) -> str | None:
        """Why ``symbol`` cannot be called, or ``None`` when it can."""
        if self.unavailable_reason is not None:
            return self.unavailable_reason
        if not self.has(symbol):
            if symbol.endswith("_cuda"):
                return f"{what}: medkernels._C was built without the CUDA kernels (no nvcc, or MEDKERNELS_CUDA=0)"
            return f"{what}: medkernels._C has no {symbol} (rebuild with `pip install -e .`)"
        return None


extension = _Extension()
