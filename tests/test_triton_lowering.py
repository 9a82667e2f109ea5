"""Every Triton kernel of every family lowers to real sm_90 code (no GPU needed):
``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` on each module's ``lowering_specs()``.
The interpreter runs the kernels' arithmetic here; this proves the GPU compiler accepts them."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import medkernels.triton as mk_triton

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402

MODULES = sorted(m.name for m in pkgutil.iter_modules(mk_triton.__path__))


def _jit_kernels(mod):
    from triton.runtime.jit import JITFunction

    return {name: obj for name, obj in vars(mod).items() if isinstance(obj, JITFunction) and name.endswith("_kernel")}


def _specs(name):
    mod = importlib.import_module(f"medkernels.triton.{name}")
    assert hasattr(mod, "lowering_specs"), f"medkernels/triton/{name}.py must define lowering_specs()"
    return mod, mod.lowering_specs()


@pytest.mark.parametrize("name", MODULES)
def test_every_kernel_has_a_lowering_spec(name):
    mod, specs = _specs(name)
    covered = {fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__ for fn, _, _ in specs}
    missing = set(_jit_kernels(mod)) - covered
    assert not missing, f"{name}: kernels without a lowering spec: {sorted(missing)}"


def _cases():
    for name in MODULES:
        try:
            _, specs = _specs(name)
        except Exception:  # reported by the test above
            continue
        for i, (fn, sig, cx) in enumerate(specs):
            yield pytest.param(fn, sig, cx, id=f"{name}-{getattr(fn, '__name__', 'kernel')}-{i}")


@pytest.mark.parametrize("fn, sig, cx", list(_cases()))
def test_lowers_for_sm90(fn, sig, cx):
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=cx)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "ptx" in compiled.asm and ".target sm_90" in compiled.asm["ptx"]
