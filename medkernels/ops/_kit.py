"""The backend kit every op family is written on.

A family (``ops/<family>.py``) declares three things and writes nothing else of this plumbing:

* **options**: one frozen dataclass per op (:func:`options`) with the non-tensor arguments the
  kernels see, already checked and canonical (ints, floats, bools, strings, int tuples). Its
  fields become the custom op's typed arguments, in order.
* **backends**: objects with ``fwd``/``bwd`` methods (and whatever else the family asks of them),
  one per entry of the family's :class:`~medkernels._dispatch.Dispatcher` (``Backend(impl=...)``).
  The compiled ones derive from :class:`Compiled`, which owns the ``medkernels._C`` entry-point
  names and, for CUDA, the stream; :func:`template` caches a parameter block per call signature.
* **ops**: one :class:`Op` each. It registers the custom op ``medkernels::<name>`` (the
  compile-safe boundary: ``torch.compile``, export, fake tensors, opcheck), its fake, the backward
  op ``medkernels::<name>_bwd`` and the autograd formula, and runs the same ``forward`` /
  ``backward`` through an ``autograd.Function`` for plain eager calls (:func:`eager_ok`).

Public functions check their arguments once per call signature through a :class:`PlanCache`
and are wrapped in :func:`public` (DLPack arrays in and out).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import _environment
from .._dlpack import accepts_dlpack
from .._extension import extension

# --- options ----------------------------------------------------------------------------------
_SCHEMA = {int: "int", float: "float", bool: "bool", str: "str", Optional[float]: "float?",
           Optional[int]: "int?", Tuple[int, ...]: "int[]", Tuple[int, int, int]: "int[]"}


def options(cls):
    """A frozen dataclass whose fields (int, float, bool, str, Optional[float|int] or int tuples)
    are an op's options; :class:`Op` turns them into the custom op's typed arguments."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if t not in _SCHEMA:
            raise TypeError(f"{cls.__name__}.{f.name}: options must be {sorted(map(str, _SCHEMA))}, got {t}")
        fields.append((f.name, _SCHEMA[t], _SCHEMA[t] == "int[]"))
    cls._schema_fields = tuple(fields)
    return cls


def _option_values(opts) -> list:
    return [list(getattr(opts, n)) if seq else getattr(opts, n) for n, _, seq in opts._schema_fields]


def _options_from(cls, values: Sequence[Any]):
    return cls(*(tuple(v) if seq else v for v, (_, _, seq) in zip(values, cls._schema_fields)))


# --- plans: the checks, geometry and backend choice once per call signature -------------------
def _meta(t):
    if t is None:
        return None
    if type(t) is not torch.Tensor:
        raise TypeError  # a subclass, a foreign array or a bad argument: no plan, the full checks run
    return t.shape, t.stride(), t.dtype, t.device


def _value_key(x):
    # exact types too: a cached plan for window=1 must not answer window=True or window=1.0
    if isinstance(x, (list, tuple)):
        return (type(x), *(_value_key(i) for i in x))
    hash(x)
    return type(x), x


def signature(tensors: Sequence[Optional[torch.Tensor]], *values) -> Optional[tuple]:
    """A plan-cache key for a call: the tensors' metadata (shape, strides, dtype, device), the other
    arguments with their exact types, and the default backend; None when something is not hashable
    or not a plain tensor (such calls are planned afresh)."""
    try:
        return (tuple(_meta(t) for t in tensors), tuple(_value_key(v) for v in values),
                _environment.DEFAULT_BACKEND)
    except TypeError:
        return None


class PlanCache:
    """Plans keyed by :func:`signature`. ``get(key, build)`` returns the plan cached for ``key`` or
    ``build()`` (cached when the key is not None; a call that fails its checks raises in ``build``
    and caches nothing). At most ``size`` plans are kept (then the cache starts afresh)."""

    def __init__(self, size: int = 256) -> None:
        self._plans: Dict[tuple, Any] = {}
        self._size = size

    def get(self, key: Optional[tuple], build: Callable[[], Any]):
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            plan = build()
            if key is not None:
                if len(self._plans) >= self._size:
                    self._plans.clear()
                self._plans[key] = plan
        return plan


_TEMPLATES = PlanCache()


def cached(key: tuple, build: Callable[[], Any]):
    """What ``build()`` returned for ``key`` the first time (compiled backends keep their
    parameter blocks and workspace sizes per call signature here)."""
    return _TEMPLATES.get(key, build)


def template(key: tuple, build: Callable[[], Any]):
    """A copy of the parameter block cached for ``key``: the compiled backends fill shapes,
    strides, dtype and options once per call signature and only the data pointers per call."""
    return copy.copy(_TEMPLATES.get(key, build))


# --- the compiled backends ---------------------------------------------------------------------
class Compiled:
    """Our C++ kernels through ``medkernels._C``. ``symbols`` maps a role ("fwd", "bwd",
    "bwd_workspace", ...) to the entry point's name; :meth:`launch` runs a kernel entry point,
    :meth:`query` a host-only one (workspace sizes). A family derives its compiled backend from
    this class and builds one object per kind: ``MyCompiled(CPU, {...})``, ``MyCompiled(CUDA, {...})``."""

    def __init__(self, kind: Kind, symbols: Dict[str, str]) -> None:
        self.kind = kind
        self.symbols = symbols

    @property
    def C(self):
        return extension.module

    def launch(self, role: str, params, like: torch.Tensor) -> None:
        self.kind.launch(getattr(extension.module, self.symbols[role]), params, like)

    def query(self, role: str, params):
        return getattr(extension.module, self.symbols[role])(params)

    def dtype(self, dtype: torch.dtype):
        """The ``medkernels._C.DType`` of a torch dtype."""
        from ._common import dtype_code

        return dtype_code(dtype)


@dataclasses.dataclass(frozen=True)
class Kind:
    """Where compiled kernels run: on the host (``CPU``) or on the tensor's CUDA stream (``CUDA``)."""

    device: str
    stream: bool

    def launch(self, fn, params, like: torch.Tensor) -> None:
        if self.stream:
            fn(params, torch.cuda.current_stream(like.device).cuda_stream)
        else:
            fn(params)


CPU = Kind("cpu", stream=False)
CUDA = Kind("cuda", stream=True)


def wants_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a backward will follow a call on ``tensors`` (grad mode on and one needs a
    gradient): the ``grad=`` input of the ``auto`` rules that differ forward-only."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def ptr(t: Optional[torch.Tensor]) -> int:
    """A tensor's data pointer, 0 for None (the kernels' "absent")."""
    return 0 if t is None else t.data_ptr()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every backend: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_SCRATCH = threading.local()
_SCRATCH_KEEP = 64 << 20


def scratch(nbytes: int, device: torch.device) -> torch.Tensor:
    """A uint8 workspace of at least ``nbytes`` (rounded up to 64), consumed before the call
    returns. On CPU this thread's buffer (up to 64 MiB) is kept between calls: a fresh multi-MiB
    buffer costs page faults on every call (about 1 ms single-threaded at 12^3 x 6 heads). On a
    GPU a new one (the caching allocator keeps it). Under :func:`poisoned` every byte is 0xFF
    (NaN floats, -1 integers): a kernel must not read workspace it has not written."""
    nbytes = max(-(-nbytes // 64) * 64, 64)
    if device.type != "cpu" or nbytes > _SCRATCH_KEEP:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    else:
        buf = getattr(_SCRATCH, "buf", None)
        if buf is None or buf.numel() < nbytes:
            buf = _SCRATCH.buf = None  # the old buffer goes before the bigger one comes
            buf = _SCRATCH.buf = torch.empty(nbytes, dtype=torch.uint8)
    if getattr(_POISON, "on", 0):
        buf.fill_(0xFF)
    return buf


@contextlib.contextmanager
def _nested(local: threading.local, attr: str):
    """Counts nested entries into a per-thread switch: ``getattr(local, attr, 0)`` is true inside."""
    before = getattr(local, attr, 0)
    setattr(local, attr, before + 1)
    try:
        yield
    finally:
        setattr(local, attr, before)


_POISON = threading.local()


def poisoned():
    """Inside this context :func:`empty` fills what it allocates with NaN (integer tensors with
    -1): tests check that a backend writes every element of its outputs."""
    return _nested(_POISON, "on")


def empty(shape, *, dtype: torch.dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` for a backend's outputs (poisoned under :func:`poisoned`)."""
    return _poison(torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like`` (the same strides for a dense tensor) for a backend's outputs
    (poisoned under :func:`poisoned`)."""
    return _poison(torch.empty_like(t))


def _poison(t: torch.Tensor) -> torch.Tensor:
    if getattr(_POISON, "on", 0):
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


# --- the eager lane ---------------------------------------------------------------------------
# An eager call on plain tensors runs an op's forward and backward through an autograd.Function
# instead of the custom ops: torch.library's Python layers (autograd wrapper, redispatch, default
# filling, alias checks) cost about 190 us per forward + backward, a third of the whole call at
# Swin UNETR's last stage (3^3 tokens, 24 heads). torch.compile, export, fake/meta tensors,
# tensor subclasses, dispatch or function modes and functorch transforms take the custom ops.
_LANE = threading.local()


def custom_ops_only():
    """Inside this context every op call goes through its custom ops, eager calls included
    (tests use it to run the custom-op path on plain tensors)."""
    return _nested(_LANE, "off")


def _modes_active() -> bool:
    # torch has no public query for an active dispatch / function mode or a functorch level; the
    # private ones are read here only, and a torch without them takes the custom ops
    try:
        return bool(torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled())
    except AttributeError:
        return True


def _wrapped():
    try:
        return torch._C._functorch.is_functorch_wrapped_tensor
    except AttributeError:
        return lambda t: True


def eager_ok(tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """Whether a call on ``tensors`` may take the eager lane."""
    if getattr(_LANE, "off", 0) or torch.compiler.is_compiling() or _modes_active():
        return False
    wrapped = _wrapped()
    return all(t is None or (type(t) is torch.Tensor and (t.is_cpu or t.is_cuda) and not wrapped(t))
               for t in tensors)


class _Eager(torch.autograd.Function):
    """An :class:`Op`'s forward and backward (the same functions as its custom ops) for eager calls."""

    @staticmethod
    def forward(ctx, op, opts, backend, *tensors):
        impl = op.dispatcher.impl(backend)
        outs = op.forward(impl, opts, *tensors)
        ctx.op, ctx.opts, ctx.impl, ctx.present = op, opts, impl, [t is not None for t in tensors]
        ctx.save_for_backward(*op.save(tensors, outs))
        ctx.mark_non_differentiable(*(outs[i] for i in op.no_grad_outputs))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        op = ctx.op
        needs = [n and p for n, p in zip(ctx.needs_input_grad[3:], ctx.present)]
        got = op.backward(ctx.impl, ctx.opts, needs, list(grads), list(ctx.saved_tensors))
        return (None, None, None, *(g if n else None for g, n in zip(got, needs)))


# --- ops --------------------------------------------------------------------------------------
def _placeholders(like: torch.Tensor, grads: Sequence[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    # a custom op returns tensors only: an absent gradient travels as an empty tensor
    return [like.new_empty((0,)) if g is None else g for g in grads]


class Op:
    """One op of a family: its custom op ``medkernels::<name>``, fake, backward op and autograd,
    and its eager lane, from plain functions.

    Args:
        name: the custom op's name.
        tensors: the tensor arguments as a schema fragment, e.g. ``"Tensor x, Tensor? bias"``.
        opts: the options class (:func:`options`); its fields follow the tensors, then
            ``str backend`` (a name the family's dispatcher has chosen).
        dispatcher: the family's :class:`~medkernels._dispatch.Dispatcher` (its ``impl(name)``
            is the backend object handed to ``forward`` and ``backward``).
        forward(impl, opts, *tensors) -> list of outputs (fresh tensors, none aliasing another).
        fake(impl, opts, *tensors) -> the outputs' metadata (the same shapes, strides, dtypes).
        backward(impl, opts, needs, grads, saved) -> one gradient (or None) per tensor argument;
            ``needs[i]``: argument i is present and wants a gradient; ``grads``: one per output
            (None for outputs the loss does not use); ``saved``: what ``save`` returned.
        backward_fake(impl, opts, needs, grads, saved) -> the gradients' metadata (None where
            absent).
        save(tensors, outputs) -> the tensors ``backward`` needs (default: all of them).
        no_grad_outputs: indices of outputs that have no gradient (statistics, saved partials).
        backward_op: the backward runs kernels (a custom op ``<name>_bwd`` then); False: it is
            plain torch code, traced by torch.compile as it is.
    """

    def __init__(self, name: str, *, tensors: str, opts, dispatcher, forward, fake, backward=None,
                 backward_fake=None, save=None, no_grad_outputs: Sequence[int] = (), backward_op: bool = True):
        self.name, self.opts, self.dispatcher = name, opts, dispatcher
        self.forward, self.backward, self.no_grad_outputs = forward, backward, tuple(no_grad_outputs)
        self.save = save or (lambda tensors, outs: (*tensors, *outs))
        self.n_tensors = n = len([a for a in tensors.split(",") if a.strip()])
        option_schema = "".join(f"{t} {name}, " for name, t, _ in opts._schema_fields)
        schema = f"({tensors}, {option_schema}str backend) -> Tensor[]"

        def run(*args):
            return list(forward(dispatcher.impl(args[-1]), _options_from(opts, args[n:-1]), *args[:n]))

        def run_fake(*args):
            return list(fake(dispatcher.impl(args[-1]), _options_from(opts, args[n:-1]), *args[:n]))

        self._op = torch.library.custom_op(f"medkernels::{name}", run, mutates_args=(), schema=schema)
        self._op.register_fake(run_fake)
        if backward is None:
            return
        self._bwd = None
        if backward_op:
            bwd_schema = f"(Tensor?[] grads, Tensor?[] saved, bool[] needs, {option_schema}str backend) -> Tensor[]"

            def run_bwd(grads, saved, needs, *rest):
                impl, o = dispatcher.impl(rest[-1]), _options_from(opts, rest[:-1])
                return _placeholders(_first(saved), backward(impl, o, needs, grads, saved))

            def run_bwd_fake(grads, saved, needs, *rest):
                impl, o = dispatcher.impl(rest[-1]), _options_from(opts, rest[:-1])
                return _placeholders(_first(saved), backward_fake(impl, o, needs, grads, saved))

            self._bwd = torch.library.custom_op(f"medkernels::{name}_bwd", run_bwd, mutates_args=(), schema=bwd_schema)
            self._bwd.register_fake(run_bwd_fake)
        self._op.register_autograd(self._autograd_backward, setup_context=self._setup)

    def _setup(self, ctx, inputs, output):
        tensors = inputs[:self.n_tensors]
        ctx.opts, ctx.backend = inputs[self.n_tensors:-1], inputs[-1]
        ctx.present = [t is not None for t in tensors]
        ctx.save_for_backward(*self.save(tensors, output))
        ctx.mark_non_differentiable(*(output[i] for i in self.no_grad_outputs))

    def _autograd_backward(self, ctx, grads):
        needs = [n and p for n, p in zip(ctx.needs_input_grad[:self.n_tensors], ctx.present)]
        saved = list(ctx.saved_tensors)
        if self._bwd is not None:
            got = self._bwd(list(grads), saved, needs, *ctx.opts, ctx.backend)
        else:
            got = self.backward(self.dispatcher.impl(ctx.backend), _options_from(self.opts, ctx.opts), needs,
                                list(grads), saved)
        return (*(g if n else None for g, n in zip(got, needs)), *([None] * (len(ctx.opts) + 1)))

    def __call__(self, opts, backend: str, *tensors: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Run the op on ``tensors`` with checked ``opts`` and a chosen ``backend`` name."""
        if eager_ok(tensors):
            if self.backward is None:
                return tuple(self.forward(self.dispatcher.impl(backend), opts, *tensors))
            return _Eager.apply(self, opts, backend, *tensors)
        return self._op(*tensors, *_option_values(opts), backend)

    @property
    def custom_op(self):
        """The ``torch.library`` custom op (for opcheck and tests)."""
        return self._op


def _first(saved: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    return next(t for t in saved if t is not None)


# --- public functions ---------------------------------------------------------------------------
_PLAIN_TYPES = frozenset((torch.Tensor, int, float, bool, str, tuple, list, type(None)))


def public(fn):
    """``accepts_dlpack(fn)`` (DLPack arrays in, the caller's kind out), except that calls whose
    arguments are all plain torch tensors and Python values go straight to ``fn``: accepts_dlpack's
    per-argument isinstance checks through torch.Tensor's metaclass cost about 10 us a call (a tenth
    of the window-attention forward at 3^3 x 24 heads)."""
    slow = accepts_dlpack(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        plain = _PLAIN_TYPES
        if all(type(a) in plain for a in args) and all(type(a) in plain for a in kwargs.values()):
            return fn(*args, **kwargs)
        return slow(*args, **kwargs)

    return wrapper
