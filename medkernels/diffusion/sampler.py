"""The Fast-DDPM S-step sampling loop on the fused steps.

``FastDDPMSampler(model, schedule)(x_T, cond)`` runs, from the schedule's last index down to its
first, ``eps = model(cat([cond, x_t], 1), t)`` (the channel-concat conditioning Fast-DDPM uses
for denoising, super-resolution and translation; ``cond=None`` feeds x_t alone) followed by one
fused DDIM or DDPM step. Step i (0 = the first, at the largest t) draws its noise from
``(seed, offset + i)``, so a run is reproducible on every backend and device.

The model receives t as a float tensor of shape (B,), as the official ``sg_generalized_steps`` /
``sg_ddpm_steps`` pass it. On a GPU the whole loop is captured once in a CUDA graph and replayed
(the model must be capturable: no host syncs, no data-dependent shapes); capture failure falls
back to the eager loop with a warning. A graph is specific to the input shape, dtype, seed and
offset.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from ..ops.diffusion import ddim_step, ddpm_step
from .schedule import FastDDPMSchedule

KINDS = ("ddim", "ddpm")
TIMESTEPS = ("schedule", "official_ddpm")


class FastDDPMSampler:
    """S-step Fast-DDPM sampler.

    Args:
        model: callable ``model(x, t) -> eps`` with x (B, C_cond + C, ...) and t (B,) float.
        schedule: a :class:`FastDDPMSchedule`; its ``timesteps`` are the indices visited.
        kind: ``"ddim"`` (the official "generalized" steps, with ``eta``) or ``"ddpm"``
            (ancestral steps, x0 clamped to [-clip, clip]).
        eta: DDIM noise scale (0: deterministic).
        clip: DDPM x0 clamp (None: none).
        backend: backend of the fused steps ("auto", "triton", "cpu", "reference").
        progress: show a tqdm progress bar over the steps (eager loop only).
        cuda_graph: capture the loop in a CUDA graph on GPU tensors ("auto": try, fall back).
        timesteps: the indices visited. ``"schedule"`` (default): the schedule's ``timesteps``,
            uniform or non-uniform as Fast-DDPM trains and describes them. ``"official_ddpm"``:
            what the official ``ddpm_noisy`` sampling loop walks whatever the scheduler,
            ``range(0, T, T // S)`` (S = ``schedule.steps``; more than S indices when S does not
            divide T). Its ``generalized`` (DDIM) loop follows the scheduler, as ``"schedule"`` does.
    """

    def __init__(self, model, schedule: FastDDPMSchedule, kind: str = "ddim", eta: float = 0.0,
                 clip: Optional[float] = 1.0, backend: str = "auto", progress: bool = True, cuda_graph="auto",
                 timesteps: str = "schedule") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(schedule, FastDDPMSchedule):
            raise TypeError(f"schedule must be a FastDDPMSchedule, got {type(schedule).__name__}")
        if not (isinstance(eta, numbers.Real) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        if clip is not None and not (isinstance(clip, numbers.Real) and not isinstance(clip, bool) and clip > 0):
            raise ValueError(f"clip must be a number > 0 or None, got {clip!r}")
        if cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
        if timesteps not in TIMESTEPS:
            raise ValueError(f"timesteps must be one of {TIMESTEPS}, got {timesteps!r}")
        self.timesteps = timesteps
        self.model, self.schedule, self.kind = model, schedule, kind
        self.eta, self.clip, self.backend, self.progress = float(eta), clip, backend, progress
        self.cuda_graph = cuda_graph
        self._graphs: Dict[tuple, tuple] = {}

    def visited(self) -> List[int]:
        """The timestep indices this sampler visits, ascending (it walks them from the last)."""
        if self.timesteps == "official_ddpm":
            T = self.schedule.num_train_timesteps
            return list(range(0, T, T // self.schedule.steps))
        return self.schedule.timesteps.tolist()

    def _pairs(self) -> List[Tuple[int, int]]:
        seq = self.visited()
        seq_next = [-1] + seq[:-1]
        return list(zip(reversed(seq), reversed(seq_next)))

    def _step_tensors(self, device):
        """Every step's (t, t_next, float t), made once up front: no host-to-device copy inside the
        loop (which a CUDA graph capture would also forbid)."""
        pairs = self._pairs()
        ts = torch.tensor([p[0] for p in pairs], dtype=torch.int64, device=device)
        tns = torch.tensor([p[1] for p in pairs], dtype=torch.int64, device=device)
        return ts, tns, ts.to(torch.float32)

    def _loop(self, x, cond, seed, offset, trajectory, progress, steps_t=None):
        n = x.shape[0]
        pairs = self._pairs()
        ts, tns, tfs = steps_t if steps_t is not None else self._step_tensors(x.device)
        x0s = []
        steps = range(len(pairs))
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"Fast-DDPM {self.kind}", leave=False)
        for i in steps:
            t, tn = ts[i].expand(n), tns[i].expand(n)
            inp = x if cond is None else torch.cat([cond, x], dim=1)
            eps = self.model(inp, tfs[i].expand(n)).to(x.dtype)  # the schedule's timesteps: valid by construction
            if self.kind == "ddim":
                out = ddim_step(x, eps, t, tn, schedule=self.schedule, eta=self.eta, seed=seed, offset=offset + i,
                                return_x0=trajectory, backend=self.backend, check_timesteps=False)
            else:
                out = ddpm_step(x, eps, t, tn, schedule=self.schedule, seed=seed, offset=offset + i, clip=self.clip,
                                return_x0=trajectory, backend=self.backend, check_timesteps=False)
            if trajectory:
                x, x0 = out
                x0s.append(x0)
            else:
                x = out
        return x, x0s

    def _graphed(self, x_T, cond, seed, offset, trajectory):
        key = (tuple(x_T.shape), x_T.dtype, x_T.device, None if cond is None else (tuple(cond.shape), cond.dtype),
               seed, offset, trajectory)
        entry = self._graphs.get(key)
        if entry is None:
            static_x = x_T.clone()
            static_c = None if cond is None else cond.clone()
            steps_t = self._step_tensors(x_T.device)
            stream = torch.cuda.Stream(device=x_T.device)
            stream.wait_stream(torch.cuda.current_stream(x_T.device))
            with torch.cuda.stream(stream), torch.no_grad():  # warm-up: compile kernels, allocate
                self._loop(static_x, static_c, seed, offset, trajectory, False, steps_t)
            torch.cuda.current_stream(x_T.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self._loop(static_x, static_c, seed, offset, trajectory, False, steps_t)
            entry = (graph, static_x, static_c, out, steps_t)
            self._graphs[key] = entry
        graph, static_x, static_c, out, _ = entry
        static_x.copy_(x_T)
        if static_c is not None:
            static_c.copy_(cond)
        graph.replay()
        return out[0].clone(), [v.clone() for v in out[1]]

    @torch.no_grad()
    def __call__(self, x_T: torch.Tensor, cond: Optional[torch.Tensor] = None, *, seed: int = 0, offset: int = 0,
                 return_trajectory: bool = False):
        """Run the S steps from x_T.

        Args:
            x_T: (B, C, ...) the starting noise.
            cond: (B, C_cond, ...) conditioning concatenated before x_t on the channel axis, or None.
            seed, offset: the noise stream; step i uses ``(seed, offset + i)``.
            return_trajectory: also return the list of x0 predictions (one per step).

        Returns:
            x_0, or (x_0, [x0_pred per step]) with ``return_trajectory``.
        """
        if cond is not None and (cond.shape[0] != x_T.shape[0] or cond.shape[2:] != x_T.shape[2:]):
            raise ValueError(f"cond must be (B, C_cond, ...) matching x_T {tuple(x_T.shape)} except in channels, "
                             f"got {tuple(cond.shape)}")
        use_graph = x_T.is_cuda and self.cuda_graph is not False
        if use_graph:
            try:
                x, x0s = self._graphed(x_T, cond, seed, offset, return_trajectory)
            except Exception as exc:  # a model that cannot be captured runs eagerly
                if self.cuda_graph is True:
                    raise
                warnings.warn(f"FastDDPMSampler: CUDA-graph capture failed ({exc}); running the loop eagerly",
                              stacklevel=2)
                self.cuda_graph = False
                x, x0s = self._loop(x_T, cond, seed, offset, return_trajectory, self.progress)
        else:
            x, x0s = self._loop(x_T, cond, seed, offset, return_trajectory, self.progress)
        return (x, x0s) if return_trajectory else x
