"""The avo attention custom ops: what rewritten graphs call and Inductor compiles (user Triton kernels inlined).

- ``avo::attention(q, k, v, mask, kernel_id, scale, causal, window, mask_kind) -> Tensor``: the public op,
  CompositeImplicitAutograd over ``avo::attention_fwd`` so that AOTAutograd sees the op that owns autograd.
- ``avo::attention_fwd(...) -> (out, lse)``: triton_op with an explicit fake impl (without one, tracing on CPU
  runs the interpreter on fake tensors) and register_autograd saving q, k, v, out, lse, mask.
- ``avo::attention_fwd_direct(...) -> (out, lse)``: what a compiled graph calls for a Gluon (ws90) forward, which
  Inductor cannot inline: a plain library op with a CUDA kernel and a fake impl, none of custom_op's Python
  layers (autograd, redispatch, alias checks: ~25-35 us a call on the H100's host, a quarter of the kernel's
  time at 4x32x1024 d128). Autograd is already handled when a graph reaches it (AOTAutograd's forward graph).
- ``avo::attention_backward(do, q, k, v, out, lse, mask, ...) -> (dq, dk, dv)``: triton_op for kernels with a
  Triton backward; otherwise (or when a bias needs its own gradient) the plain-torch recompute fallback runs.
Kernels are looked up by ``kernel_id`` in an in-process registry filled by :func:`register_kernel`.
"""

import torch

from ..artifact import KernelRecord
from ..settings import triton_interpreting
from . import launch
from .fallback import recompute_backward
from .loader import LoadedKernel, get_loaded, load_record

_ARGS = "str kernel_id, float scale, bool causal, int window, str mask_kind"


def register_kernel(record: KernelRecord) -> str:
    """Load ``record`` (by trust tier: re-rendered from the installed template, or its source after the sha256 and
    grammar checks) and return the kernel id the op takes.

    The loader's cache is the registry: anything loaded (a record, or a search candidate via load_source) is
    callable by its id.
    """
    return load_record(record).kernel_id


def get_kernel(kernel_id: str) -> LoadedKernel:
    """The loaded kernel for ``kernel_id``; RuntimeError naming the id when it was never loaded here."""
    loaded = get_loaded(kernel_id)
    if loaded is None:
        raise RuntimeError(f"avo kernel {kernel_id!r} is not registered in this process (call "
                           f"avo_inductor.kernels.op.register_kernel(record) first)")
    return loaded


@torch.library.triton_op(
    "avo::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kernel_id: str,
                  scale: float, causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) fp32 (natural log, +inf for rows with no key)."""
    return _run_forward(q, k, v, mask, kernel_id, scale, causal, window, mask_kind)


def _run_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kernel_id: str,
                 scale: float, causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward launch behind both forward ops."""
    loaded = get_kernel(kernel_id)
    return launch.forward(loaded.functions, loaded.launch, q, k, v, mask, scale=scale, causal=causal,
                          window=window, mask_kind=mask_kind)


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, mask, kernel_id, scale, causal, window, mask_kind):
    b, hq, nq = q.shape[0], q.shape[1], q.shape[2]
    out = q.new_empty((b, hq, nq, v.shape[3]))
    lse = q.new_empty((b, hq, nq), dtype=torch.float32)
    return out, lse


@torch.library.triton_op(
    "avo::attention_backward", mutates_args=())
def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, mask: torch.Tensor | None, kernel_id: str, scale: float, causal: bool,
                       window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) by the kernel's Triton backward; dk/dv summed over each GQA group."""
    loaded = get_kernel(kernel_id)
    return launch.backward(loaded.functions, loaded.launch, do, q, k, v, o, lse, mask, scale=scale, causal=causal,
                           window=window, mask_kind=mask_kind)


@attention_backward.register_fake
def _attention_backward_fake(do, q, k, v, o, lse, mask, kernel_id, scale, causal, window, mask_kind):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, mask, kernel_id, scale, causal, window, mask_kind = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.mark_non_differentiable(lse)
    ctx.avo_args = (kernel_id, scale, causal, window, mask_kind)


def _backward(ctx, do, _dlse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    kernel_id, scale, causal, window, mask_kind = ctx.avo_args
    mask_needs_grad = bool(ctx.needs_input_grad[3])
    loaded = get_kernel(kernel_id)
    if loaded.has_backward and not mask_needs_grad:
        dq, dk, dv = torch.ops.avo.attention_backward(do, q, k, v, out, lse, mask, kernel_id, scale, causal,
                                                      window, mask_kind)
        dmask = None
    else:
        dq, dk, dv, dmask = recompute_backward(do, q, k, v, mask, scale=scale, causal=causal, window=window,
                                               mask_kind=mask_kind, mask_needs_grad=mask_needs_grad)
    return dq, dk, dv, dmask, None, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)



def _keep_opaque(mode, func, types, args, kwargs):
    return mode.__torch_dispatch__(func, types, args, kwargs)


from torch._subclasses.functional_tensor import FunctionalTensorMode  # noqa: E402

# triton_op's own rule: under FunctionalTensorMode (AOTAutograd) it decomposes the op into its kernel launches,
# so Inductor sees and inlines them.
_decompose_fwd = getattr(attention_fwd, "_torch_dispatch_fns", {}).get(FunctionalTensorMode, _keep_opaque)


def _fwd_functional(mode, func, types, args, kwargs):
    """Decompose the forward unless its kernel is a Gluon one (launched directly, never through wrap_triton:
    Inductor cannot trace Gluon host descriptors), which becomes the opaque ``avo::attention_fwd_direct`` that
    Inductor calls as an extern kernel."""
    kernel_id = kwargs["kernel_id"] if "kernel_id" in kwargs else args[4]
    if get_kernel(kernel_id).launch.grid in launch.WS90_GRIDS:
        with mode:
            return torch.ops.avo.attention_fwd_direct.default(*args, **kwargs)
    return _decompose_fwd(mode, func, types, args, kwargs)


_decompose_bwd = getattr(attention_backward, "_torch_dispatch_fns", {}).get(FunctionalTensorMode, _keep_opaque)


def _bwd_functional(mode, func, types, args, kwargs):
    """Decompose the backward into its Triton launches (Inductor inlines them) unless the kernel's backward is the
    fused Gluon one (bwd_ws90), which stays an opaque op Inductor calls as an extern kernel."""
    kernel_id = kwargs["kernel_id"] if "kernel_id" in kwargs else args[7]
    if get_kernel(kernel_id).launch.bwd_ws90:
        return _keep_opaque(mode, func, types, args, kwargs)
    return _decompose_bwd(mode, func, types, args, kwargs)


if triton_interpreting():
    # Under TRITON_INTERPRET=1, wrap_triton hands back the InterpretedFunction untraceable (torch 2.11-2.13),
    # so the triton_op's functional decomposition would run the interpreter on functional/fake tensors. Keep
    # the ops opaque in traced graphs instead: Inductor calls them as extern ops (shapes from register_fake)
    # and the interpreter runs on real tensors at run time. On CUDA the ops decompose and Inductor inlines them.
    attention_fwd.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
    attention_backward.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
else:
    attention_fwd.register_torch_dispatch(FunctionalTensorMode, _fwd_functional)
    attention_backward.register_torch_dispatch(FunctionalTensorMode, _bwd_functional)

_LIB = torch.library.Library("avo", "FRAGMENT")
_LIB.define(f"attention(Tensor q, Tensor k, Tensor v, Tensor? mask, {_ARGS}) -> Tensor")
_LIB.define(f"attention_fwd_direct(Tensor q, Tensor k, Tensor v, Tensor? mask, {_ARGS}) -> (Tensor, Tensor)")
_LIB.impl("attention_fwd_direct", _run_forward, "CUDA")
torch.library.register_fake("avo::attention_fwd_direct", _attention_fwd_fake, lib=_LIB)


def _attention_composite(q, k, v, mask, kernel_id, scale, causal, window, mask_kind):
    return torch.ops.avo.attention_fwd(q, k, v, mask, kernel_id, scale, causal, window, mask_kind)[0]


_LIB.impl("attention", _attention_composite, "CompositeImplicitAutograd")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              kernel_id: str, scale: float | None = None, causal: bool = False, window: int | None = None,
              mask_kind: str = "none") -> torch.Tensor:
    """Python convenience over torch.ops.avo.attention: q (B,Hq,Nq,D), k (B,Hkv,Nk,D), v (B,Hkv,Nk,Dv)."""
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    return torch.ops.avo.attention(q, k, v, mask, kernel_id, scale, causal, int(window or 0), mask_kind)
