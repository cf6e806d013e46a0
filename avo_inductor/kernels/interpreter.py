"""CPU-interpreter shims: Triton's interpreter (3.9) multiplies bf16 tiles as raw uint16 bits in ``tl.dot``, and
has no descriptor reductions (``desc.atomic_add``, the TMA dq accumulation of bwd_dq_tma).

The interpreter stores bfloat16 as uint16 and ``create_dot`` hands those bits to np.matmul, so any bf16
``tl.dot`` returns garbage (~1e10 errors on randn 16x16 tiles). Kernels are unaffected on GPUs; this
widens bf16 operands to fp32 (exact) before the interpreter's matmul. Applied only when TRITON_INTERPRET=1.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..settings import triton_interpreting

if TYPE_CHECKING:
    import numpy as np

_LOCK = threading.Lock()
_PATCHED = False


def _bf16_bits_to_f32(data: np.ndarray) -> np.ndarray:
    import numpy as np

    return (data.astype(np.uint32) << 16).view(np.float32)


def ensure_interpreter_fixes() -> None:
    """Idempotently patch the interpreter's bf16 dot when running under TRITON_INTERPRET=1."""
    global _PATCHED
    if _PATCHED or not triton_interpreting():
        return
    with _LOCK:
        if _PATCHED:
            return
        import triton.language as tl
        from triton.runtime import interpreter

        builder_cls = interpreter.InterpreterBuilder
        original = builder_cls.create_dot

        def create_dot(self: interpreter.InterpreterBuilder, a: interpreter.TensorHandle, b: interpreter.TensorHandle,
                       d: interpreter.TensorHandle, input_precision: Any,
                       max_num_imprecise_acc: Any) -> interpreter.TensorHandle:
            if a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16:
                import numpy as np

                a_data = _bf16_bits_to_f32(a.data) if a.dtype == tl.bfloat16 else a.data.astype(np.float32)
                b_data = _bf16_bits_to_f32(b.data) if b.dtype == tl.bfloat16 else b.data.astype(np.float32)
                out = np.matmul(a_data, b_data, dtype=np.float32).astype(d.data.dtype) + d.data
                return interpreter.TensorHandle(out, d.dtype.scalar)
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)

        builder_cls.create_dot = create_dot
        if not hasattr(builder_cls, "create_descriptor_reduce"):
            builder_cls.create_descriptor_reduce = _descriptor_reduce
        _PATCHED = True


def _descriptor_reduce(self: Any, kind: Any, desc: Any, value: Any, indices: Any) -> Any:
    """``desc.atomic_add(offsets, tile)`` (the interpreter has no descriptor reductions): an elementwise atomic
    add over the tile's in-bounds elements, which is what the copy engine's bulk reduce-add computes."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    if kind != ir.DESCRIPTOR_REDUCE_KIND.ADD:
        raise NotImplementedError(f"descriptor reduction {kind} is not emulated; only ADD")
    ptrs, mask = desc.materialize_pointers(indices)
    op = ir.ATOMIC_OP.FADD if value.dtype.is_floating() else ir.ATOMIC_OP.ADD
    self.create_atomic_rmw(op, ptrs, value, mask, ir.MEM_SEMANTIC.RELAXED, ir.MEM_SYNC_SCOPE.GPU)
    return interpreter.TensorHandle(value.data, value.dtype.scalar)
