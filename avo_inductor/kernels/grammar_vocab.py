"""The vocabulary of kernel source: the exact imports, decorators, annotations, loop iterators, namespace
attributes (tl.*, gl.*, tl.math.*, Hopper's mbarrier/tma), value attributes and builtins a kernel may use. Plain
data; kernels/grammar.py says where each may appear. Everything absent is refused."""
from __future__ import annotations

import re

MAX_STRING_CHARS = 256  # string literals outside docstrings (call arguments such as input_precision="ieee")

# Import statement -> the name it binds. Only these exact forms (and aliases) are accepted.
IMPORT_FORMS: dict[tuple[str, str, str | None], str] = {
    ("import", "triton", None): "triton",
    ("import", "triton.language", "tl"): "tl",
    ("import", "math", None): "math",
    ("from triton.experimental", "gluon", None): "gluon",
    ("from triton.experimental.gluon", "language", "gl"): "gl",
    **{("from triton.experimental.gluon.language.nvidia.hopper", name, None): name
       for name in ("fence_async_shared", "mbarrier", "tma", "warpgroup_mma", "warpgroup_mma_wait")},
}
DECORATORS = frozenset({"triton.jit", "gluon.jit"})
CONSTEXPR_ANNOTATIONS = frozenset({"tl.constexpr", "gl.constexpr"})
LOOP_ITERATORS = frozenset({"range", "tl.range", "tl.static_range", "gl.static_range"})

_TL_FUNCTIONS = (
    "arange", "zeros", "zeros_like", "full", "load", "store", "dot", "dot_scaled", "where", "maximum", "minimum",
    "exp", "exp2", "log", "log2", "sqrt", "sqrt_rn", "rsqrt", "abs", "fma", "sigmoid", "softmax", "floor", "ceil",
    "sin", "cos", "erf", "fdiv", "div_rn", "umulhi", "clamp", "sum", "max", "min", "argmax", "argmin", "xor_sum",
    "cumsum", "cumprod", "reduce", "associative_scan", "sort", "topk", "flip", "histogram", "gather",
    "cdiv", "program_id", "num_programs", "multiple_of", "max_contiguous", "max_constancy", "assume",
    "trans", "reshape", "view", "broadcast", "broadcast_to", "expand_dims", "permute", "ravel", "split", "join",
    "interleave", "cat", "squeeze", "unsqueeze", "cast", "swizzle2d", "rand", "randn", "randint",
    "atomic_add", "atomic_max", "atomic_min", "atomic_and", "atomic_or", "atomic_xor", "atomic_xchg", "atomic_cas",
    "make_tensor_descriptor", "load_tensor_descriptor", "store_tensor_descriptor", "make_block_ptr",
    "static_assert", "device_assert", "debug_barrier", "static_range", "range", "constexpr", "pointer_type",
    "PropagateNan",
)
_DTYPES = ("float16", "bfloat16", "float32", "float64", "float8e4nv", "float8e5", "int1", "int8", "int16", "int32",
           "int64", "uint8", "uint16", "uint32", "uint64")
_GL_FUNCTIONS = (
    "AutoLayout", "BlockedLayout", "DotOperandLayout", "NVMMADistributedLayout", "NVMMASharedLayout",
    "SliceLayout", "SwizzledSharedLayout", "allocate_shared_memory", "arange", "abs", "barrier", "cast", "cdiv",
    "constexpr", "convert_layout", "device_assert", "exp", "exp2", "expand_dims", "fma", "full", "full_like",
    "join", "load", "log", "log2", "max", "maximum", "min", "minimum", "multiple_of", "max_contiguous",
    "num_programs", "num_warps", "permute", "program_id", "reshape", "rsqrt", "set_auto_layout", "split", "sqrt",
    "static_assert", "static_range", "store", "sum", "warp_specialize", "where", "zeros", "zeros_like",
)
# Namespace path -> attributes it may be followed by (a path that is a key may appear only as a prefix).
# Deliberately absent: tl.core / tl.extra (libdevice) / tl.semantic / tl.standard, inline_asm_elementwise,
# device_print / static_print, and every module object.
NAMESPACES: dict[tuple[str, ...], frozenset[str]] = {
    ("tl",): frozenset(_TL_FUNCTIONS + _DTYPES),
    ("tl", "math"): frozenset({"exp", "exp2", "log", "log2", "sqrt", "sqrt_rn", "rsqrt", "abs", "fma", "floor",
                               "ceil", "sin", "cos", "erf", "fdiv", "div_rn", "umulhi"}),
    ("gl",): frozenset(_GL_FUNCTIONS + _DTYPES),
    ("gl", "NVMMASharedLayout"): frozenset({"get_default_for"}),
    ("math",): frozenset({"pi", "e", "tau", "inf", "log", "log2", "exp", "sqrt"}),
    ("mbarrier",): frozenset({"MBarrierLayout", "allocate_mbarrier", "arrive", "expect", "init", "invalidate",
                              "wait"}),
    # async_copy_global_to_shared is Triton 3.6's name of async_load (render._gluon_dialect renames it).
    # async_atomic_add is Triton 3.9's TMA bulk reduce-add; kernels/gluon_compat.py gives 3.6 the same name.
    ("tma",): frozenset({"async_copy_global_to_shared", "async_load", "async_copy_shared_to_global",
                         "async_store", "store_wait", "async_atomic_add"}),
}
# Attributes of values (tensors, pointers, descriptors, shared-memory buffers, dtypes): pure accessors only.
VALUE_ATTRIBUTES = frozenset({
    "to", "T", "dtype", "shape", "numel", "element_ty", "primitive_bitwidth", "block_type", "nbytes", "layout",
    "reshape", "permute", "trans", "view", "broadcast_to", "expand_dims", "split", "ravel",
    "sum", "max", "min", "argmax", "argmin", "cumsum", "index", "slice", "load", "store", "atomic_add",
})
BUILTIN_CALLS = frozenset({"float", "int", "range", "min", "max", "len"})  # Triton's jit builtins, pure ones
DIRECT_CALLS = frozenset({"fence_async_shared", "warpgroup_mma", "warpgroup_mma_wait"})  # Hopper imports
FLOAT_STRINGS = frozenset({"inf", "-inf", "+inf", "nan"})
RESERVED = frozenset(v for v in IMPORT_FORMS.values()) | BUILTIN_CALLS
CONST_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
