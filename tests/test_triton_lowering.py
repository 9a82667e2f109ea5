"""Every Triton kernel of every family lowers to real sm_90 code (no GPU needed):
``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` on each module's ``lowering_specs()``.

The tests run under the interpreter, where kernels are not compilable objects, so the
compilation happens in one subprocess with the interpreter off; each spec is then one test.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import medkernels.triton as mk_triton

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.iter_modules(mk_triton.__path__) if not m.name.startswith("_"))

_SCRIPT = r"""
import importlib, json, sys, traceback
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction
out = {}
for name in sys.argv[1:]:
    try:
        mod = importlib.import_module("medkernels.triton." + name)
        kernels = {k for k, v in vars(mod).items() if isinstance(v, JITFunction) and k.endswith("_kernel")}
        specs = mod.lowering_specs()
    except Exception as exc:
        out[name] = {"error": traceback.format_exc()}
        continue
    covered = set()
    results = []
    for fn, sig, cx in specs:
        covered.add(fn.fn.__name__)
        try:
            c = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=cx),
                               target=GPUTarget("cuda", 90, 32))
            ok = ".target sm_90" in c.asm["ptx"]
            results.append([fn.fn.__name__, "ok" if ok else "no sm_90 target in the PTX"])
        except Exception:
            results.append([fn.fn.__name__, traceback.format_exc()[-3000:]])
    out[name] = {"missing": sorted(kernels - covered), "results": results}
print("@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def lowered():
    env = dict(os.environ, TRITON_INTERPRET="0", MEDKERNELS_TRITON_INTERPRET="0", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *MODULES], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, f"the lowering subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][2:])


@pytest.mark.parametrize("name", MODULES)
def test_every_kernel_lowers_for_sm90(lowered, name):
    res = lowered[name]
    assert "error" not in res, res.get("error")
    assert not res["missing"], f"{name}: kernels without a lowering spec: {res['missing']}"
    assert res["results"], f"{name}: lowering_specs() is empty"
    failed = [f"{kernel}: {msg}" for kernel, msg in res["results"] if msg != "ok"]
    assert not failed, "\n\n".join(failed)
