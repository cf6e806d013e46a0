"""Gluon API differences between the Triton releases we support (3.6 onward), closed in one trusted place.

Kernel templates are written against one spelling of each Gluon call; this module makes that spelling exist on
every supported Triton before a template is compiled (``install()``, called by the loader). Today:
``gl.barrier`` (a barrier of the calling warps; 3.6 calls it ``gl.thread_barrier``, 3.9 only ``barrier``) and
``tma.async_atomic_add`` (a TMA bulk reduce-add from shared memory into global memory; FlashAttention-3's dQ
accumulation): Triton 3.9 names it; Triton 3.6 has the IR op (``create_async_tma_reduce``) but no Python
wrapper, so one is added to its hopper ``tma`` module. Templates never reach the builder themselves: the kernel
grammar refuses ``_semantic`` and private names.
"""
from __future__ import annotations

import functools


@functools.cache
def install() -> bool:
    """Add the wrappers this Triton lacks; False where Gluon's Hopper API is absent (nothing to patch)."""
    try:
        from triton._C.libtriton import ir
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language import _core
        from triton.experimental.gluon.language.nvidia.hopper import tma
    except ImportError:
        return False
    if not hasattr(gl, "barrier") and hasattr(gl, "thread_barrier"):
        gl.barrier = gl.thread_barrier
    if not hasattr(tma, "async_atomic_add"):

        @_core.builtin
        def async_atomic_add(tensor_desc, coord, src, _semantic=None):  # type: ignore[no-untyped-def]
            """TMA bulk reduce-add of shared-memory tile ``src`` into ``tensor_desc`` at ``coord`` (3.9's API)."""
            coord = _semantic._convert_to_ir_values(coord, require_i64=False)
            _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                      src.handle)

        tma.async_atomic_add = async_atomic_add
    return True
