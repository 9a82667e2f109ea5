"""Fast-DDPM noise schedules: the betas, the cumulative products and the few-step index lists.

Everything here follows mirthAI/Fast-DDPM (``runners/diffusion.py``):

* betas: ``linear`` is ``linspace(beta_start, beta_end, T)`` in float64 (numpy's formula:
  ``start + i * step`` with the last value set to ``beta_end``); ``cosine`` is the official
  ``alpha_cosine`` (s = 0.008, betas clipped at 0.999).
* ``alphas_cumprod[t] = prod_{s <= t} (1 - beta_s)``, 0-indexed, used alike by training and
  sampling; ``alphas_cumprod`` at index -1 is 1 (the end of the chain).
* ``uniform`` indices: ``arange(-1, T, T // S)`` with the first entry set to 0. Note that this
  gives ``len(range(-1, T, T // S))`` indices, which is S + 1 for S = 10 and T = 1000
  (0, 99, 199, ..., 899, 999): we keep the official list as it is.
* ``non-uniform`` indices: for S = 10 the fixed list 0, 199, 399, 599, 699, 799, 849, 899, 949, 999;
  otherwise ``ceil(linspace(0, 699, n1 + 1)[:-1])`` then ``ceil(linspace(699, 999, n2))`` with
  ``n1 = int(0.4 S)``, ``n2 = int(0.6 S)``, in float64 as the official sampler computes it
  (the official trainer uses float32 ``torch.linspace``; for S in 2..1000 the two lists differ
  for 45 values of S: {83, 84, 165, 166, 167, 203, 204, 218, 219, 323, 324, 330, 331, 332, 405,
  406, 407, 428, 429, 435, 436, 437, 645, 646, 647, 660, 661, 662, 668, 669, 728, 729, 758, 759,
  810, 811, 812, 855, 856, 857, 863, 864, 870, 871, 872}, in at most two indices, each by 1).
* ``beta_start`` and ``beta_end`` must be finite with ``0 < beta_start <= beta_end < 1`` (checked
  for both beta schedules, though ``cosine`` does not use them).

Tables are float64 on the CPU; :meth:`FastDDPMSchedule.alpha_table` moves them to a device once
and caches them there.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import torch

KINDS = ("uniform", "non-uniform")
BETA_SCHEDULES = ("linear", "cosine")
_NON_UNIFORM_10 = (0, 199, 399, 599, 699, 799, 849, 899, 949, 999)


def _linspace64(start: float, stop: float, num: int) -> torch.Tensor:
    """numpy.linspace(start, stop, num) in float64, bit for bit (start + i * step, last = stop)."""
    if num == 1:
        return torch.tensor([float(start)], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    y = torch.arange(num, dtype=torch.float64) * step + start
    y[-1] = stop
    return y


def _check_betas(beta_start, beta_end) -> None:
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not 0 < v < 1:
            raise ValueError(f"{name} must be a finite number in (0, 1), got {v!r}")
    if beta_start > beta_end:
        raise ValueError(f"beta_start must be <= beta_end, got beta_start={beta_start!r} > beta_end={beta_end!r}")


def make_betas(kind: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """The (T,) float64 betas of the official ``get_beta_schedule``."""
    _check_betas(beta_start, beta_end)
    T = num_train_timesteps
    if kind == "linear":
        return _linspace64(beta_start, beta_end, T)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(0, T + 1, dtype=torch.float64) / T
        ac = torch.cos((steps + s) / (1 + s) * math.pi * 0.5) ** 2
        ac = ac / ac[0]
        return (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {kind!r}")


def fast_ddpm_timesteps(kind: str, steps: int, num_train_timesteps: int) -> torch.Tensor:
    """The official Fast-DDPM index list (ascending int64) for ``steps`` sampling steps."""
    T, S = num_train_timesteps, steps
    if isinstance(S, bool) or not isinstance(S, int) or S < 1:
        raise ValueError(f"steps must be a positive int, got {S!r}")
    if S > T:
        raise ValueError(f"steps={S} must be <= num_train_timesteps={T}")
    if kind == "uniform":
        idx = torch.arange(-1, T, T // S, dtype=torch.int64)
        idx[0] = 0
        return idx
    if kind == "non-uniform":
        if S == 10 and T == 1000:
            return torch.tensor(_NON_UNIFORM_10, dtype=torch.int64)
        if T != 1000:
            raise ValueError(f"the non-uniform schedule is defined for num_train_timesteps=1000, got {T}")
        n1, n2 = int(S * 0.4), int(S * 0.6)
        stage1 = torch.ceil(_linspace64(0.0, 699.0, n1 + 1)[:-1])
        stage2 = torch.ceil(_linspace64(699.0, 999.0, n2)) if n2 > 0 else torch.empty(0, dtype=torch.float64)
        idx = torch.cat((stage1, stage2)).to(torch.int64)
        if idx.numel() == 0:
            raise ValueError(f"the non-uniform schedule needs steps >= 2, got {S}")
        return idx
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


class FastDDPMSchedule:
    """A Fast-DDPM schedule: T training timesteps, S sampling indices.

    Args:
        kind: ``"uniform"`` or ``"non-uniform"`` (the official ``scheduler_type``).
        steps: S, the number of sampling steps asked for (the official ``--timesteps``).
        num_train_timesteps: T (1000 in Fast-DDPM).
        beta_schedule: ``"linear"`` or ``"cosine"`` (the official ``alpha_cosine``).
        beta_start, beta_end: ends of the linear betas.

    Attributes:
        timesteps: (L,) int64, ascending, the absolute indices the sampler visits (from the last
            down to the first) and the trainer draws from.
        betas, alphas_cumprod: (T,) float64 on the CPU.
    """

    def __init__(
        self,
        kind: str = "uniform",
        steps: int = 10,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.steps = steps
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.timesteps = fast_ddpm_timesteps(kind, steps, num_train_timesteps)
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # [1, abar_0, ..., abar_{T-1}]: index t + 1 gives abar_t, and t = -1 gives 1.
        self._table = torch.cat((torch.ones(1, dtype=torch.float64), self.alphas_cumprod))
        self._cache: Dict[torch.device, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"FastDDPMSchedule(kind={self.kind!r}, steps={self.steps}, "
            f"num_train_timesteps={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r})"
        )

    def alpha_table(self, device=None) -> torch.Tensor:
        """(T + 1,) float64 ``[1, abar_0, ..., abar_{T-1}]`` on ``device`` (cached per device)."""
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        table = self._cache.get(device)
        if table is None:
            table = self._table.to(device)
            self._cache[device] = table
        return table

    def next_timesteps(self) -> torch.Tensor:
        """(L,) int64: the index each step goes to (-1 after the first), as ``seq_next`` officially."""
        return torch.cat((torch.tensor([-1], dtype=torch.int64), self.timesteps[:-1]))

    def sample_timesteps(
        self, batch: int, *, generator: Optional[torch.Generator] = None, device=None
    ) -> torch.Tensor:
        """(batch,) int64 training timesteps drawn in antithetic pairs, as the official trainer.

        ``i ~ U{0..L-1}`` for ``batch // 2 + 1`` draws, then their mirrors ``L - 1 - i``; the
        first ``batch`` of the concatenation index ``timesteps``.
        """
        L = self.timesteps.numel()
        idx1 = torch.randint(0, L, (batch // 2 + 1,), generator=generator)
        idx = torch.cat((idx1, L - idx1 - 1))[:batch]
        t = self.timesteps[idx]
        return t.to(device) if device is not None else t
