"""Launch plans: one forward's copies, allocations and kernel launches as data, built once per call signature.

Why: building a launch in Python (stride dicts, scalar checks, Gluon layouts and descriptors, Triton's binder)
cost 0.15-0.3 ms of host time per call on the H100's host, more than the kernel itself at 4x32x1024 d128
(~0.12 ms). torch.compile calls the Gluon (ws90) forward as an opaque op, so every compiled step paid it, and the
search's eager timings of small specs measured Python, not the kernel. :func:`launch.forward` describes a call
as a :class:`ForwardPlan`; eager calls keep plans in a small LRU (:data:`PLANS`) keyed by everything the launches
depend on (:func:`plan_key`), and after its first launch through Triton's JIT a :class:`PlannedLaunch` launches
the CompiledKernel directly, as Inductor's generated code does, filling only the tensor slots of a prepared
argument vector. The key holds every integer argument and the 16-byte alignment of every pointer, which is all
Triton specializes a compiled kernel on, so the kernel the JIT returned is the one it would pick again. Under
tracing (fake tensors, SymInts) a plan is built per call and launched through ``wrap_triton`` as before.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_PLANS = 256  # distinct (kernel, shape, stride, scalar) signatures kept per process


@dataclass(frozen=True)
class DescriptorSpec:
    """A Gluon host TensorDescriptor over tensor role ``source``: block ``block``, shared layout ``layout``."""

    source: str
    block: tuple[int, ...]
    layout: Any


@dataclass
class PlannedLaunch:
    """One kernel launch: ``static`` keywords (sizes, strides, constexprs, launch options) plus ``tensors``,
    keyword -> tensor role filled per call from the plan's tensor table."""

    fn: Any
    grid: tuple[Any, ...]
    static: dict[str, Any]
    tensors: dict[str, str]
    _runner: Callable[..., None] | None = field(default=None, repr=False)
    _args: list[Any] = field(default_factory=list, repr=False)
    _slots: tuple[tuple[int, str], ...] = field(default=(), repr=False)

    def launch(self, table: dict[str, Any], via: Callable[..., Any], eager: bool) -> None:
        """Launch with ``table``'s tensors: directly when a compiled kernel is held, else through ``via``
        (launch._launch, or a plain ``fn[grid]`` for Gluon), keeping the compiled kernel of an eager launch."""
        if self._runner is not None:
            args = self._args.copy()
            for index, role in self._slots:
                args[index] = table[role]
            self._runner(*args)
            return
        kwargs = {**self.static, **{name: table[role] for name, role in self.tensors.items()}}
        kernel = via(self.fn, self.grid, **kwargs)
        if eager:
            self._keep(kernel, kwargs)

    def _keep(self, kernel: Any, kwargs: dict[str, Any]) -> None:
        """Hold ``kernel[grid]`` and the positional argument vector when the launch went through Triton's JIT
        on a GPU (an interpreted launch returns no CompiledKernel and keeps the JIT path)."""
        from triton.compiler.compiler import CompiledKernel

        names = getattr(self.fn, "arg_names", None)
        if type(kernel) is not CompiledKernel or names is None or not all(isinstance(g, int) for g in self.grid):
            return
        signature = inspect.signature(self.fn.fn).parameters
        args: list[Any] = []
        for name in names:
            if name in kwargs:
                args.append(kwargs[name])
            elif signature[name].default is not inspect.Parameter.empty:
                args.append(signature[name].default)
            else:
                return
        grid = tuple(self.grid) + (1,) * (3 - len(self.grid))
        self._slots = tuple((names.index(name), role) for name, role in self.tensors.items())
        for index, _ in self._slots:
            args[index] = None  # the plan outlives this call: holding its tensors would keep their memory alive
        self._args = args
        self._runner = kernel[grid]


@dataclass
class ForwardPlan:
    """A forward call as data: which inputs need an aligned contiguous copy (tensor descriptors), the buffers
    to allocate (role -> shape, dtype), the Gluon descriptors to build and the launches in order. ``via`` makes a
    launch that has no compiled kernel held (launch._launch, or a direct one for Gluon), ``copy`` the aligned copy
    of an input (launch._for_descriptors), ``descriptor`` a Gluon host descriptor (plans with descriptors only)."""

    out_shape: tuple[Any, ...]
    lse_shape: tuple[Any, ...]
    buffers: dict[str, tuple[tuple[Any, ...], torch.dtype]]
    copies: tuple[str, ...]
    full_rank: bool
    descriptors: dict[str, DescriptorSpec]
    launches: tuple[PlannedLaunch, ...]
    via: Callable[..., Any]
    copy: Callable[[torch.Tensor, bool], torch.Tensor]
    descriptor: Callable[[torch.Tensor, DescriptorSpec], Any] | None = None
    allocator: Callable[..., Any] | None = None  # Triton's global-scratch allocator, set before every launch
    unit_stride_out: bool = False  # the kernel needs O with a unit last stride (a caller's other out gets a copy)
    zeroed: tuple[str, ...] = ()  # buffers allocated zero-filled on every call (split_combine's tickets)
    owner: Any = None  # what the plan key names by id (kernel functions, launch config): kept alive with the plan
    _templates: dict[str, Any] = field(default_factory=dict, repr=False)  # descriptors of the first run

    def run(self, tensors: dict[str, Any], out: torch.Tensor | None, lse: torch.Tensor | None,
            eager: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the plan on ``tensors`` (roles q, k, v, mask): returns (out, lse)."""
        q = tensors["q"]
        for role in self.copies:
            tensors[role] = self.copy(tensors[role], self.full_rank)
        out = torch.empty(self.out_shape, dtype=q.dtype, device=q.device) if out is None else out
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=q.device) if lse is None else lse
        target = out
        if self.unit_stride_out and out.stride(3) != 1:
            target = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        tensors["out"], tensors["lse"] = target, lse
        for role, (shape, dtype) in self.buffers.items():
            make = torch.zeros if role in self.zeroed else torch.empty
            tensors[role] = make(shape, dtype=dtype, device=q.device)
        for role, spec in self.descriptors.items():
            template = self._templates.get(role)
            if template is None:
                if self.descriptor is None:
                    raise ValueError(f"launch plan has descriptor {role!r} but no descriptor builder")
                tensors[role] = self.descriptor(tensors[spec.source], spec)  # built and validated by Triton
                if eager:  # kept without its base: a cached plan must not keep this call's memory alive
                    self._templates[role] = _rebased(tensors[role], None)
            else:
                tensors[role] = _rebased(template, tensors[spec.source])
        if self.allocator is not None:
            import triton

            triton.set_allocator(self.allocator)  # a context variable: set on every call, whichever thread launches
        for planned in self.launches:
            planned.launch(tensors, self.via, eager)
        if target is not out:
            out.copy_(target)
        return out, lse


def _rebased(template: Any, base: torch.Tensor | None) -> Any:
    """``template`` (a validated host descriptor) over ``base``: a tensor of the same plan key, so the same
    shape, strides, dtype and alignment, and Triton's checks would pass again; they cost ~10 us a descriptor."""
    clone = object.__new__(type(template))
    clone.__dict__.update(template.__dict__)
    clone.base = base
    return clone


def plan_key(kernel: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
             scalars: tuple[Any, ...]) -> tuple[Any, ...]:
    """Everything a forward's launches depend on besides the tensors' contents: the kernel (ids of its functions
    and launch config, kept alive by the plan's ``owner``: hashing Triton functions costs microseconds),
    ``scalars`` (mask kind, scale, causal, window), the current CUDA device (whose context the compiled kernel is
    loaded in), and the dtypes, devices, shapes, strides and 16-byte alignment of q, k, v and the caller's mask (the
    view the kernels read is a function of these: launch.mask_operand). A hit skips launch.forward's input checks,
    so everything they check is in the key: a call that would fail them misses and fails them."""
    current = torch.cuda.current_device() if q.is_cuda else -1
    masked = () if mask is None else (mask.dtype, mask.device, mask.shape, mask.stride(), mask.data_ptr() % 16)
    return (kernel, scalars, current, masked, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(),
            q.data_ptr() % 16, k.data_ptr() % 16, v.data_ptr() % 16)


class PlanCache:
    """A bounded LRU of eager forward plans (least recently used dropped past ``limit``)."""

    def __init__(self, limit: int = MAX_PLANS) -> None:
        self.limit = limit
        self._plans: OrderedDict[tuple[Any, ...], ForwardPlan] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> ForwardPlan | None:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def put(self, key: tuple[Any, ...], plan: ForwardPlan) -> None:
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > self.limit:
            self._plans.popitem(last=False)

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


PLANS = PlanCache()
