"""Probe: sha256 of the sm_90 PTX of every rendered entry kernel over a matrix of configurations, without a GPU.

Answers "does this template edit change any generated code?": run it before and after, compare the JSON files
(``--compare OLD.json``). Each configuration renders a genome for a spec (the default genome and the knob
variations the campaigns use), binds launch arguments the way the launcher's ABI passes them (launch.py), lets
Triton's own binder derive the specialization (divisibility, ==1 constants), and compiles for
GPUTarget("cuda", 90, 32) with line info off, so the digest covers the code and nothing of the source layout.
Usage: python -m benchmarks.probes.ptx_digest [--out FILE.json] [--compare OLD.json] [--only SUBSTRING] [--jobs N]
       [--records BUNDLE/records]
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, not the interpreter's Python objects
os.environ["TRITON_DISABLE_LINE_INFO"] = "1"  # no .loc/.file: the digest must not follow line numbers
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default today, stated (silences its warning)

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from avo_inductor.kernels.render import default_genome, render, template_digest, ws90_bias_stages
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
TARGET = ("cuda", 90, 32)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Config:
    """One configuration: a spec, the template, genome overrides on its default genome, and the entry kernels."""

    name: str
    spec: AttentionSpec
    template: str = "flash_v1"
    knobs: tuple[tuple[str, Any], ...] = ()
    kernels: tuple[str, ...] = ("attn_fwd",)
    bias_tma: bool = False  # flash_ws90 with a bias: the TMA ring (else pointer loads)


def _spec(d: int, mask: str = "none", causal: bool = False, window: int | None = None, n: int = 1000,
          nq: int | None = None, hq: int = 8, hkv: int = 8, dtype: str = "bfloat16") -> AttentionSpec:
    return AttentionSpec(2, hq, hkv, n if nq is None else nq, n, d, dtype=dtype, causal=causal, window=window,
                         mask=MaskKind(mask))


def configs() -> list[Config]:
    """The matrix: every entry kernel x mask kinds x causal/window x the GENOME-CONSTANTS knobs, at d64 and d128."""
    out: list[Config] = []
    bwd = ("attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
    for d in (64, 128):
        fwd_masks = [("none", False, None), ("none", True, None), ("none", True, 256), ("bias", False, None),
                     ("bias", True, None), ("bool", False, None), ("bool", True, None), ("padding", False, None),
                     ("padding", True, None), ("alibi", False, None), ("alibi", True, None), ("alibi", True, 256)]
        for mask, causal, window in fwd_masks:
            tag = f"d{d}/{mask}/{'window' if window else 'causal' if causal else 'full'}"
            out.append(Config(f"fwd/{tag}", _spec(d, mask, causal, window)))
            out.append(Config(f"bwd/{tag}", _spec(d, mask, causal, window), kernels=bwd))
        # Even lengths: no key/row bounds tests (EVEN_M / EVEN_N).
        out.append(Config(f"fwd/d{d}/none/full/even", _spec(d, n=1024)))
        out.append(Config(f"fwd/d{d}/none/causal/even", _spec(d, causal=True, n=1024)))
        out.append(Config(f"bwd/d{d}/none/causal/even", _spec(d, causal=True, n=1024), kernels=bwd))
        # ALiBi's knobs one at a time (the default has both).
        for mma, bound in ((False, False), (True, False), (False, True)):
            for causal in (False, True):
                out.append(Config(f"fwd/d{d}/alibi/{'causal' if causal else 'full'}/mma{int(mma)}-bound{int(bound)}",
                                  _spec(d, "alibi", causal), knobs=(("alibi_mma", mma), ("alibi_bound", bound))))
        # Forward source knobs on the unmasked and causal paths, and on a bias.
        fwd_knobs: list[tuple[tuple[str, Any], ...]] = [
            (("exp2", False),), (("causal_split", False),), (("lazy_rescale", True),), (("persistent", True),),
            (("heavy_first", False),), (("use_tma", True),), (("overlap_qk", True),), (("warp_specialize", True),),
            (("persistent", True), ("use_tma", True), ("overlap_qk", True)), (("lazy_rescale", True), ("exp2", False)),
        ]
        for knobs in fwd_knobs:
            label = "+".join(f"{k}={int(v)}" for k, v in knobs)
            for causal in (False, True):
                out.append(Config(f"fwd/d{d}/none/{'causal' if causal else 'full'}/{label}", _spec(d, causal=causal),
                                  knobs=knobs))
        for knobs in ((("exp2", False),), (("lazy_rescale", True),), (("use_tma", True),)):
            label = "+".join(f"{k}={int(v)}" for k, v in knobs)
            out.append(Config(f"fwd/d{d}/bias/causal/{label}", _spec(d, "bias", True), knobs=knobs))
            out.append(Config(f"fwd/d{d}/alibi/full/{label}", _spec(d, "alibi", False), knobs=knobs))
        # Decode: split-K (+ reduce), packed GQA, the masks the decode campaigns use.
        for mask in ("none", "padding", "alibi", "bias"):
            dec = _spec(d, mask, nq=1, n=4096, hq=32, hkv=8)
            out.append(Config(f"decode/d{d}/{mask}/pack-split", dec, kernels=("attn_fwd", "attn_fwd_reduce")))
        dec = _spec(d, nq=1, n=4096, hq=32, hkv=8)
        out.append(Config(f"decode/d{d}/none/split-nopack", dec, knobs=(("pack_gqa", False),),
                          kernels=("attn_fwd", "attn_fwd_reduce")))
        out.append(Config(f"decode/d{d}/none/pack-nosplit", dec, knobs=(("kv_splits", 1),)))
        out.append(Config(f"decode/d{d}/none/pack-split-combine", dec, knobs=(("split_combine", True),),
                          kernels=("attn_fwd_split_combine",)))
        out.append(Config(f"fwd/d{d}/none/full/gqa", _spec(d, hq=8, hkv=2)))
        # Backward source knobs.
        bwd_knobs: list[tuple[tuple[str, Any], ...]] = [
            (("bwd_transposed", False),), (("bwd_transposed", True),), (("bwd_dq_atomic", True),),
            (("bwd_dq_atomic", True), ("bwd_transposed", False)), (("bwd_dq_atomic", True), ("bwd_dq_tma", True)),
            (("bwd_dq_atomic", True), ("bwd_dq_tma", True), ("bwd_transposed", False)),
            (("causal_split", False),), (("exp2", False),),
            (("heavy_first", False),),
        ]
        for knobs in bwd_knobs:
            label = "+".join(f"{k}={int(v)}" for k, v in knobs)
            for mask, causal in (("none", True), ("bias", False), ("alibi", True)):
                out.append(Config(f"bwd/d{d}/{mask}/{'causal' if causal else 'full'}/{label}", _spec(d, mask, causal),
                                  knobs=knobs, kernels=bwd))
        # flash_ws90 (Gluon, sm_90a): masks none / bias by pointers / bias through TMA / alibi, persistent or not.
        for mask, tma in (("none", False), ("bias", False), ("bias", True), ("alibi", False)):
            for causal in (False, True):
                for persistent in (False, True):
                    name = f"ws90/d{d}/{mask}{'-tma' if tma else ''}/{'causal' if causal else 'full'}/persist{int(persistent)}"
                    out.append(Config(name, _spec(d, mask, causal, n=1024), "flash_ws90",
                                      (("persistent", persistent),), ("attn_fwd_ws90",), tma))
        out.append(Config(f"ws90/d{d}/none/causal/heavy_first=0", _spec(d, causal=True, n=1024), "flash_ws90",
                          (("heavy_first", False),), ("attn_fwd_ws90",)))
        # The fused Gluon backward (bwd_ws90), GQA, behind either forward family.
        for template in ("flash_v1", "flash_ws90"):
            for causal in (False, True):
                out.append(Config(f"ws90bwd/d{d}/{template}/{'causal' if causal else 'full'}",
                                  _spec(d, causal=causal, hq=8, hkv=2), template, (("bwd_ws90", True),),
                                  ("attn_bwd_ws90",)))
    for dtype in ("float32", "float16"):
        for mask, causal in (("none", False), ("bias", True), ("alibi", False)):
            tag = f"{dtype}/d64/{mask}/{'causal' if causal else 'full'}"
            spec = _spec(64, mask, causal, dtype=dtype)
            out.append(Config(f"fwd/{tag}", spec))
            out.append(Config(f"bwd/{tag}", spec, kernels=bwd))
    return out


def record_configs(folder: Path) -> list[Config]:
    """Configurations from a bundle's template records (``--records``): each record's genome at its own spec and at
    ragged lengths (1000; the verifier's off-multiple-of-16 specialization), forward kernels, backward too for a
    training record. Whether a template edit changed the code a shipped record runs (``cache restamp``)."""
    from avo_inductor.artifact import KernelRecord

    out: list[Config] = []
    for path in sorted(folder.glob("*.json")):
        record = KernelRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        if record.tier != "template" or record.genome is None:
            continue
        genome = dict(record.genome)
        template = str(genome.pop("template", "flash_v1"))
        kernels: tuple[str, ...] = ("attn_fwd",)
        if int(genome.get("kv_splits", 1)) > 1:  # the kernels the launcher runs for it (launch._plan_forward)
            kernels = ("attn_fwd_split_combine",) if genome.get("split_combine") else ("attn_fwd", "attn_fwd_reduce")
        if record.spec.needs_grad:
            kernels += ("attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
        if template == "flash_ws90":
            kernels = ("attn_fwd_ws90",)
        ragged = dataclasses.replace(record.spec, q_len=1 if record.spec.q_len == 1 else 1000, kv_len=1000)
        # flash_ws90 reads a bias through a TMA ring or by pointers, chosen per call (launch._ws90_bias_ring): both
        bias_paths = (False, True) if template == "flash_ws90" and record.spec.mask is MaskKind.BIAS else (False,)
        for tag, spec in (("own", record.spec), ("ragged", ragged)):
            for tma in bias_paths:
                out.append(Config(f"record/{path.stem}/{tag}{'-bias-tma' if tma else ''}", spec, template,
                                  tuple(sorted(genome.items())), kernels, tma))
    return out


def _contig(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _strides(prefix: str, s: tuple[int, ...], names: str = "bhmd") -> dict[str, int]:
    return {f"stride_{prefix}{n}": s[i] for i, n in enumerate(names)}


def _buf(dtype: torch.dtype) -> torch.Tensor:
    """A stand-in pointer: Triton's binder reads only its dtype and its address's alignment."""
    return torch.empty(64, dtype=dtype)


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _mask_operand(spec: AttentionSpec, q: torch.Tensor, alibi_bound: bool) -> tuple[torch.Tensor, tuple[int, ...], int]:
    """(operand, strides, MASK_KIND) as launch.mask_operand passes them."""
    b, hq, nq, nk = spec.batch, spec.q_heads, spec.q_len, spec.kv_len
    kind = spec.mask.value
    if kind == "none":
        return q, (0, 0, 0, 0), 0
    if kind == "alibi":
        return _buf(torch.float32), (0, 1, 0, 0), 3
    if kind == "padding":
        return _buf(torch.bool), (nk, 0, 0, 1), 2
    if kind == "bool":
        return _buf(torch.bool), _contig((b, hq, nq, nk)), 2
    return _buf(q.dtype), _contig((b, hq, nq, nk)), 1


def _scalars(spec: AttentionSpec) -> dict[str, Any]:
    d, dv = spec.head_dim, spec.v_head_dim or spec.head_dim
    window = spec.window or 0
    return dict(BATCH=spec.batch, H_Q=spec.q_heads, GROUP=spec.q_heads // spec.kv_heads, N_Q=spec.q_len,
                N_KV=spec.kv_len, sm_scale=1.0 / math.sqrt(d), window=window, HEAD_DIM=d, V_HEAD_DIM=dv,
                BLOCK_D=_pow2(d), BLOCK_DV=_pow2(dv), IS_CAUSAL=bool(spec.causal or window), HAS_WINDOW=window > 0)


def _fwd_args(spec: AttentionSpec, g: Any) -> dict[str, Any]:
    dt = _DTYPES[spec.dtype]
    q = _buf(dt)
    b, hq, hkv, nq, nk, d = spec.batch, spec.q_heads, spec.kv_heads, spec.q_len, spec.kv_len, spec.head_dim
    dv = spec.v_head_dim or d
    m, m_strides, code = _mask_operand(spec, q, g.alibi_bound)
    splits = g.kv_splits
    o_shape = (b, hq * splits, nq, dv) if splits > 1 else (b, hq, nq, dv)
    rows = nq * (hq // hkv) if g.pack_gqa else nq
    return dict(Q=q, K=_buf(dt), V=_buf(dt), O=_buf(torch.float32 if splits > 1 else dt), LSE=_buf(torch.float32),
                MASK=m, **_strides("q", _contig((b, hq, nq, d))), **_strides("k", _contig((b, hkv, nk, d)), "bhnd"),
                **_strides("v", _contig((b, hkv, nk, dv)), "bhnd"), **_strides("o", _contig(o_shape)),
                **_strides("m", m_strides, "bhmn"), **_scalars(spec), BLOCK_M=g.block_m, BLOCK_N=g.block_n,
                MASK_KIND=code, EVEN_M=g.even_fast_path and rows % g.block_m == 0,
                EVEN_N=g.even_fast_path and nk % g.block_n == 0, SPLITS=splits, num_warps=g.num_warps,
                num_stages=g.num_stages)


def _split_combine_args(spec: AttentionSpec, g: Any) -> dict[str, Any]:
    """attn_fwd_split_combine's arguments: the forward's, then the output, its lse, the tickets and OF's strides."""
    dv = spec.v_head_dim or spec.head_dim
    return dict(**_fwd_args(spec, g), OF=_buf(_DTYPES[spec.dtype]), LSEF=_buf(torch.float32),
                TICKETS=_buf(torch.int32), **_strides("f", _contig((spec.batch, spec.q_heads, spec.q_len, dv))))


def _reduce_args(spec: AttentionSpec, g: Any) -> dict[str, Any]:
    dt = _DTYPES[spec.dtype]
    dv = spec.v_head_dim or spec.head_dim
    return dict(OP=_buf(torch.float32), LSEP=_buf(torch.float32), O=_buf(dt), LSE=_buf(torch.float32),
                **_strides("o", _contig((spec.batch, spec.q_heads, spec.q_len, dv))), BATCH=spec.batch,
                H_Q=spec.q_heads, N_Q=spec.q_len, V_HEAD_DIM=dv, BLOCK_M=1, BLOCK_DV=_pow2(dv), SPLITS=g.kv_splits,
                num_warps=1, num_stages=1)


def _bwd_args(spec: AttentionSpec, g: Any, kernel: str) -> dict[str, Any]:
    dt = _DTYPES[spec.dtype]
    b, hq, hkv, nq, nk, d = spec.batch, spec.q_heads, spec.kv_heads, spec.q_len, spec.kv_len, spec.head_dim
    dv = spec.v_head_dim or d
    q = _buf(dt)
    o_strides = _contig((b, hq, nq, dv))
    sc = _scalars(spec)
    if kernel == "attn_bwd_preprocess":
        return dict(O=_buf(dt), DO=_buf(dt), DELTA=_buf(torch.float32), **_strides("o", o_strides),
                    **_strides("do", o_strides), H_Q=hq, N_Q=nq, V_HEAD_DIM=dv, BLOCK_M=g.bwd_block_m,
                    BLOCK_DV=sc["BLOCK_DV"], num_warps=4, num_stages=1)
    m, m_strides, code = _mask_operand(spec, q, False)
    dq_dtype = torch.float32 if g.bwd_dq_atomic else dt
    tm, tn = g.bwd_block_m, g.bwd_block_n
    if kernel == "attn_bwd_dq" and g.bwd_dq_swap:
        tm, tn = tn, tm
    return dict(Q=q, K=_buf(dt), V=_buf(dt), DO=_buf(dt), LSE=_buf(torch.float32), DELTA=_buf(torch.float32), MASK=m,
                DQ=_buf(dq_dtype), DK=_buf(dt), DV=_buf(dt), **_strides("q", _contig((b, hq, nq, d))),
                **_strides("k", _contig((b, hkv, nk, d)), "bhnd"), **_strides("v", _contig((b, hkv, nk, dv)), "bhnd"),
                **_strides("do", o_strides), **_strides("m", m_strides, "bhmn"),
                **_strides("dq", _contig((b, hq, nq, d))), **_strides("dk", _contig((b, hkv, nk, d)), "bhnd"),
                **_strides("dv", _contig((b, hkv, nk, dv)), "bhnd"), **sc, MASK_KIND=code,
                num_warps=g.bwd_num_warps, num_stages=g.bwd_num_stages, BLOCK_M=tm, BLOCK_N=tn,
                EVEN_M=g.even_fast_path and nq % tm == 0, EVEN_N=g.even_fast_path and nk % tn == 0)


def _load(source: str, tmp: Path) -> Any:
    from avo_inductor.kernels import gluon_compat

    gluon_compat.install()  # as the loader does: the Gluon spellings the templates use
    sha = hashlib.sha256(source.encode()).hexdigest()
    path = tmp / f"probe_kernel_{sha[:16]}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _compile_triton(fn: Any, kwargs: dict[str, Any]) -> str:
    """PTX of a plain @triton.jit kernel, specialized by Triton's own binder as a launch with ``kwargs`` would be."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    return compiled.asm["ptx"]


def _compile_ws90(fn: Any, spec: AttentionSpec, g: Any, bias_tma: bool) -> str:
    """PTX of the Gluon forward for sm_90a, its descriptors typed as the launcher builds them (as
    tests/_ws90_compile.py does)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    d = spec.head_dim
    q = torch.empty(1, 2, 256, d, dtype=_DTYPES[spec.dtype])

    def descriptor(rows: int, cols: int = d) -> str:
        block = [1, 1, rows, cols]
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return mangle_type(TensorDescriptor(q, list(q.shape), list(q.stride()), block, layout))

    code = {"none": 0, "bias": 1, "alibi": 3}[spec.mask.value]
    signature = dict(Q_DESC=descriptor(g.block_m), K_DESC=descriptor(g.block_n), V_DESC=descriptor(g.block_n),
                     O="*bf16", LSE="*fp32", MASK="*fp32" if code == 3 else "*bf16", stride_ob="i32", stride_oh="i32",
                     stride_om="i32", stride_mb="i32", stride_mh="i32", stride_mm="i32", stride_mn="i32",
                     BATCH="i32", H_Q="i32", GROUP="i32", N_Q="i32", N_KV="i32", qk_scale="fp32")
    bias_stages = ws90_bias_stages(g.block_m, g.block_n, g.num_stages, d) if bias_tma else 1
    constants = dict(BLOCK_M=g.block_m, BLOCK_N=g.block_n, HEAD_D=d, STAGES=g.num_stages, IS_CAUSAL=spec.causal,
                     MASK_KIND=code, BIAS_TMA=bias_tma, BIAS_STAGES=bias_stages, BIAS_BCAST_B=False,
                     BIAS_BCAST_H=False, num_warps=g.num_warps)
    if bias_tma:
        signature["B_DESC"] = descriptor(g.block_m, g.block_n)
    else:
        constants["B_DESC"] = None
    signature.update({name: "constexpr" for name in constants})
    signature = {name: signature[name] for name in fn.arg_names}
    source = GluonASTSource(fn, signature, {(fn.arg_names.index(n),): v for n, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget(*TARGET), options={"num_warps": g.num_warps})
    return compiled.asm["ptx"]


def compile_ws90_bwd(fn: Any, spec: AttentionSpec) -> Any:
    """The fused Gluon backward (bwd_ws90) compiled for sm_90a, its descriptors typed as launch._backward_ws90
    builds them (also tests/_ws90_bwd_compile.py's compiler)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from avo_inductor.kernels import launch

    d = spec.head_dim
    t = torch.empty(1, 2, 256, d, dtype=_DTYPES[spec.dtype])
    acc = torch.empty(1, 2, 256, d, dtype=torch.float32)
    bm, bn = launch.WS90_BWD_BLOCK_M, launch.WS90_BWD_BLOCK_N

    def descriptor(x: torch.Tensor, rows: int) -> str:
        return mangle_type(launch.ws90_bwd_descriptor(x, rows))

    pointer = "*bf16" if spec.dtype == "bfloat16" else "*fp16"
    signature: dict[str, str] = dict(
        Q_DESC=descriptor(t, bm), K_DESC=descriptor(t, 2 * bn), V_DESC=descriptor(t, 2 * bn),
        DO_DESC=descriptor(t, bm), DQ_DESC=descriptor(acc, bm), LSE="*fp32",
        DELTA="*fp32", DK=pointer, DV=pointer, **{f"stride_d{x}{y}": "i32" for x in "kv" for y in "bhn"},
        BATCH="i32", H_Q="i32", GROUP="i32", N_Q="i32", N_KV="i32", qk_scale="fp32", sm_scale="fp32")
    constants = dict(BLOCK_M=bm, BLOCK_N=bn, HEAD_D=d, STAGES=launch.WS90_BWD_STAGES, IS_CAUSAL=spec.causal,
                     num_warps=4)
    signature.update({name: "constexpr" for name in constants})
    signature = {name: signature[name] for name in fn.arg_names}
    source = GluonASTSource(fn, signature, {(fn.arg_names.index(n),): v for n, v in constants.items()})
    return triton.compile(source, target=GPUTarget(*TARGET), options={"num_warps": 4})


def digest_config(cfg: Config) -> dict[str, str]:
    """{kernel: sha256 of its PTX} for one configuration ("error: ..." where it does not compile)."""
    g = default_genome(cfg.spec, H100, cfg.template)
    if cfg.knobs:
        g = g.replace(**dict(cfg.knobs))
    rk = render(g, cfg.spec)
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        module = _load(rk.source, Path(tmp))
        for kernel in cfg.kernels:
            fn = getattr(module, kernel)
            try:
                if kernel == "attn_fwd_ws90":
                    ptx = _compile_ws90(fn, cfg.spec, g, cfg.bias_tma)
                elif kernel == "attn_bwd_ws90":
                    ptx = compile_ws90_bwd(fn, cfg.spec).asm["ptx"]
                elif kernel == "attn_fwd":
                    ptx = _compile_triton(fn, _fwd_args(cfg.spec, g))
                elif kernel == "attn_fwd_split_combine":
                    ptx = _compile_triton(fn, _split_combine_args(cfg.spec, g))
                elif kernel == "attn_fwd_reduce":
                    ptx = _compile_triton(fn, _reduce_args(cfg.spec, g))
                else:
                    ptx = _compile_triton(fn, _bwd_args(cfg.spec, g, kernel))
            except Exception as exc:  # a config that does not compile is data, reported beside the others
                out[kernel] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                continue
            out[kernel] = hashlib.sha256(ptx.encode()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write {config/kernel: sha256} here")
    parser.add_argument("--compare", type=Path, help="a previous --out file: print identical / DIFFERENT per entry")
    parser.add_argument("--only", default="", help="configurations whose name contains this")
    parser.add_argument("--jobs", type=int, default=1, help="compiler processes")
    parser.add_argument("--records", type=Path, help="a bundle's records/ folder: its records' kernels instead of "
                                                     "the matrix")
    args = parser.parse_args()
    todo = [c for c in (record_configs(args.records) if args.records else configs()) if args.only in c.name]
    start = time.time()
    digests: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for cfg, result in zip(todo, pool.map(digest_config, todo)):
            for kernel, digest in result.items():
                key = f"{cfg.name}/{kernel}"
                digests[key] = digest
                print(f"{digest[:16] if not digest.startswith('error') else digest}  {key}", flush=True)
    print(f"{len(digests)} kernels from {len(todo)} configurations in {time.time() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = digests
        if args.records:  # the evidence avo_inductor.cache restamp reads: which compiler and templates made it
            import triton

            templates = sorted({c.template for c in todo})
            payload = {"triton": triton.__version__, "template_digests": {t: template_digest(t) for t in templates},
                       "kernels": digests}
        args.out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.compare:
        old = json.loads(args.compare.read_text(encoding="utf-8"))
        old = old.get("kernels", old)
        same = [k for k in digests if old.get(k) == digests[k]]
        diff = [k for k in digests if k in old and old[k] != digests[k]]
        for k in diff:
            print(f"DIFFERENT  {k}")
        print(f"identical {len(same)}, different {len(diff)}, new {len(digests) - len(same) - len(diff)}")


if __name__ == "__main__":
    main()
