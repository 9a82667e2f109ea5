"""Run a function on W local gloo ranks (CPU processes) and collect what each rank returns.

Used by the tests and the benchmark (per-rank peak memory of the ring and all-gather losses);
the worker functions live here so spawned processes can import them.
"""

from __future__ import annotations

import math
import os
import queue as queue_mod
import socket
import time
from contextlib import contextmanager
from typing import Any, Callable, List, Sequence

import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: Sequence, queue) -> None:
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            queue.put((rank, "ok", fn(rank, world, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # report, never hang the parent
        import traceback

        queue.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_gloo(world: int, fn: Callable, *args: Any, timeout: float = 300.0) -> List[Any]:
    """``[fn(rank, world, *args) for each rank]``, each rank a spawned process in one gloo group
    (one thread each). Raises if a rank fails or times out."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    with _env(OMP_NUM_THREADS="1"):
        procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue)) for r in range(world)]
        for p in procs:
            p.start()
    results: List[Any] = [None] * world
    errors: List[str] = []
    pending = set(range(world))
    deadline = time.monotonic() + timeout
    try:
        while pending:
            try:
                rank, status, value = queue.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [r for r in pending if procs[r].exitcode not in (None, 0)]
                if dead:
                    errors.append(f"ranks {dead} exited with codes {[procs[r].exitcode for r in dead]}")
                    break
                if time.monotonic() > deadline:
                    errors.append(f"ranks {sorted(pending)} did not finish within {timeout:.0f} s")
                    break
                continue
            pending.discard(rank)
            if status == "ok":
                results[rank] = value
            else:
                errors.append(f"rank {rank}: {value}")
    finally:
        for p in procs:
            p.join(timeout=0 if errors else 30)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("distributed run failed:\n" + "\n".join(errors))
    return results


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """High-water mark of the bytes torch's CPU allocator holds while ``fn`` runs, replayed from
    the profiler's raw allocation records (each allocation and free counted once)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


# --- workers -----------------------------------------------------------------------------------
def global_batch(n_local: Sequence[int], d: int, seed: int, dtype=torch.float64, labels: bool = False):
    """The concatenated batch every rank slices its block from (the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(n_local)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    lab = torch.randint(0, 3, (n,), generator=g) if labels else None
    return x.to(dtype), y.to(dtype), lab


def check_worker(rank: int, world: int, configs: Sequence[dict]):
    """For each config (n_local, d, exchange, labels, reduction, backend): this rank's loss and
    gradients of the distributed loss on its block of the global batch."""
    from .sigmoid_loss import sigmoid_loss

    out = []
    for cfg in configs:
        n_local, d = cfg["n_local"], cfg["d"]
        x, y, lab = global_batch(n_local, d, seed=7, labels=cfg["labels"])
        start = sum(n_local[:rank])
        sl = slice(start, start + n_local[rank])
        xs, ys = x[sl].clone().requires_grad_(), y[sl].clone().requires_grad_()
        t = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        kw = dict(labels=lab[sl], labels_y=lab[sl]) if cfg["labels"] else {}
        if cfg.get("module"):
            from ..nn import SigLIPLoss

            mod = SigLIPLoss(init_t_prime=1.1, init_bias=-2.0, distributed=True, reduction=cfg["reduction"],
                             normalize=True, backend=cfg["backend"], exchange=cfg["exchange"]).double()
            with torch.no_grad():  # the exact float64 values of the functional runs
                mod.t_prime.fill_(1.1)
                mod.bias.fill_(-2.0)
            loss = mod(xs, ys, **kw)
            loss.backward()
            t, b = mod.t_prime, mod.bias
        else:
            loss = sigmoid_loss(xs, ys, t, b, reduction=cfg["reduction"], exchange=cfg["exchange"],
                                backend=cfg["backend"], normalize=True, **kw)
            loss.backward()
        out.append({"loss": loss.item(), "dx": xs.grad.numpy(), "dy": ys.grad.numpy(), "dt": t.grad.item(),
                    "db": b.grad.item()})
    return out


def peak_memory_worker(rank: int, world: int, n_local: int, d: int, exchange: str, backend: str) -> int:
    """Peak bytes torch's CPU allocator holds on this rank during one forward + backward."""
    from .sigmoid_loss import sigmoid_loss

    g = torch.Generator().manual_seed(rank)
    x = torch.randn(n_local, d, generator=g).div_(math.sqrt(d)).requires_grad_()
    y = torch.randn(n_local, d, generator=g).div_(math.sqrt(d)).requires_grad_()
    t = torch.tensor(math.log(10.0), requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    return cpu_peak_bytes(lambda: sigmoid_loss(x, y, t, b, exchange=exchange, backend=backend).backward())


def mismatch_worker(rank: int, world: int, what: str, exchange: str) -> str:
    """Rank 1 differs from the others in ``what`` ("d", "dtype" or "labels"); returns the error
    this rank's call raised (or "no error")."""
    from medkernels.distributed import sigmoid_loss

    d = 8 + (4 if what == "d" and rank == 1 else 0)
    dtype = torch.float32 if what == "dtype" and rank == 1 else torch.float64
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(3, d, generator=g, dtype=dtype), torch.randn(3, d, generator=g, dtype=dtype)
    labels = torch.arange(3) if what == "labels" and rank == 1 else None
    try:
        sigmoid_loss(x, y, 1.0, -1.0, labels=labels, labels_y=labels, exchange=exchange, backend="reference")
    except ValueError as exc:
        return f"ValueError: {exc}"
    return "no error"
