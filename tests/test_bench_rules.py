"""``auto`` never loses to the reference it could have picked (issue 17, item 3), checked on every
committed benchmark run under ``benchmarks/results/``: in each row group (op, shape, dtype) an
``auto(<backend>)`` row names the backend the dispatcher's rule chose, and that backend's own row
in the same run must be at least as fast as the reference backend (``ours-reference`` where a
suite measures it apart from the plain-PyTorch ``reference`` row). Model rows (``auto`` against the plain
PyTorch model) must not be slower either. The benchmark suites label their auto rows this way."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
SUITES = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def _groups(path: Path):
    rows = json.loads(path.read_text())["rows"]
    groups = defaultdict(dict)
    for r in rows:
        if r.get("failure") is None and r.get("ms") is not None:
            groups[(r["op"], r["shape"], r["dtype"])][r["provider"]] = r
    return groups


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_auto_picks_only_backends_that_beat_the_reference(path):
    losers = []
    for key, rows in _groups(path).items():
        # the reference auto could have picked: our reference backend's row where a suite measures
        # it apart from the plain-PyTorch baseline (group norm), else the baseline
        ref = rows.get("ours-reference", rows.get("reference"))
        for provider in rows:
            m = re.fullmatch(r"auto\((\w+)\)", provider)
            if m is None or ref is None:
                continue
            picked = m.group(1)
            if picked == "reference":
                continue
            own = rows.get(picked)
            assert own is not None, f"{key}: auto picked {picked!r} but the run has no {picked!r} row"
            if own["ms"] > ref["ms"]:
                losers.append(f"{key}: auto picks {picked} at {own['ms']:.3f} ms, reference {ref['ms']:.3f} ms")
        if "auto" in rows and ref is not None and rows["auto"]["ms"] > ref["ms"]:
            losers.append(f"{key}: auto {rows['auto']['ms']:.3f} ms, reference {ref['ms']:.3f} ms")
    assert not losers, "auto loses to the reference it could have picked:\n" + "\n".join(losers)


@pytest.mark.parametrize("suite", SUITES, ids=[p.stem for p in SUITES])
def test_suites_label_auto_rows_with_the_backend_picked(suite):
    # an op suite's auto row says which backend ran (f"auto({name})") so the test above can hold
    # the rule to that backend's own row; bench_models compares whole models instead
    src = suite.read_text()
    if suite.stem == "bench_models":
        return
    assert 'providers["auto"]' not in src, f"{suite.name}: label the auto row as auto(<backend>)"
