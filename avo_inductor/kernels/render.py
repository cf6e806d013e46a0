"""KernelGenome -> KernelSource (the only place knobs turn into code): :func:`render`.

The knob table (artifact.KNOBS) says where each knob acts: knobs with a template constant fill the GENOME-CONSTANTS
block of templates/flash_v1_fwd.py, knobs with a launch key go into the LaunchConfig the trusted launcher reads
(some do both). A knob or spec the template cannot honour (other templates, dropout) raises ValueError instead of
being silently ignored.

Template ``flash_ws90`` (Hopper): flash_v1's module (its backward serves training) plus the Gluon forward of
templates/flash_ws90_fwd.py as the entry point, launched through the descriptor ABI (launch grid "ws90").
"""
from __future__ import annotations

import functools
import hashlib
import re
from importlib import resources

from ..artifact import KNOBS, KernelSource, LaunchConfig, constants_block, launch_dict
from ..spec import AttentionSpec, HardwareKey, MaskKind, next_power_of_two
from .genome import KernelGenome

TEMPLATES = ("flash_v1", "flash_ws90")
FWD_ENTRY = "attn_fwd"
BWD_ENTRY = "attn_bwd"
WS90_ENTRY = "attn_fwd_ws90"
# flash_ws90: the Gluon forward (templates/flash_ws90_fwd.py) appended to a flash_v1 module, whose backward (and
# the forward helpers it shares) it keeps. Only the forward's tiles differ: BLOCK_M rows per math warpgroup.
WS90_BLOCK_M = 64
WS90_BLOCK_N = (64, 128)
WS90_HEAD_DIMS = (64, 128)
WS90_MASKS = (MaskKind.NONE, MaskKind.BIAS, MaskKind.ALIBI)
# The fused Gluon backward (templates/flash_ws90_bwd.py, knob bwd_ws90): either family appends it to its module.
WS90_BWD_FILE = "flash_ws90_bwd.py"
_SMEM_LIMIT = 227 * 1024  # shared memory one block may use on sm_90
_SMEM_SCRATCH = 16 * 1024  # the compiler's own (layout conversions): 16.5 KB over the tiles in ptxas reports
MAX_HEAD_DIM = 256
_CONSTANTS_RE = re.compile(r"# GENOME-CONSTANTS-START\n.*?# GENOME-CONSTANTS-END\n", re.S)
_IMPORT_LINES = ("import triton\n", "import triton.language as tl\n")


@functools.cache  # read once per process, like template_digest: the text rendered and the digest recorded agree
def _template_text(name: str) -> str:
    return resources.files("avo_inductor.kernels").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def template_digest(template: str) -> str:
    """Hash of a template family's source files: part of a genome's search identity, so a search database resumed
    after the template changed re-evaluates its genomes instead of trusting scores of kernels it no longer renders
    (an unknown template hashes as such; render reports it)."""
    try:
        if template == "flash_ws90":
            text = _template_text("flash_ws90_fwd.py") + _template_text("flash_v1_fwd.py") + _template_text(
                "flash_v1_bwd.py")
        else:
            text = _template_text(f"{template}_fwd.py") + _template_text(f"{template}_bwd.py")
        if template in TEMPLATES:  # either family renders the fused Gluon backward (bwd_ws90)
            text += _template_text(WS90_BWD_FILE)
    except (FileNotFoundError, OSError):
        text = f"<missing template {template}>"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _strip_docstring_and_imports(text: str) -> str:
    """The backward template is appended to the forward one: drop its module docstring and imports."""
    if text.startswith('"""'):
        text = text[text.index('"""', 3) + 3:].lstrip("\n")
    for line in _IMPORT_LINES:
        text = text.replace(line, "", 1)
    return text


def ws90_smem_bytes(genome: KernelGenome, head_dim: int) -> int:
    """Shared memory of a flash_ws90 program: both warpgroups' Q tiles and STAGES K and V tiles (16-bit)."""
    return _ws90_tile_bytes(genome.block_m, genome.block_n, genome.num_stages, head_dim)


def _ws90_tile_bytes(block_m: int, block_n: int, stages: int, head_dim: int) -> int:
    return 2 * (2 * block_m + 2 * stages * block_n) * head_dim


_WS90_BARRIER_BYTES = 1024  # the mbarriers, with room to spare (a bias-ring kernel needs no conversion scratch)


def ws90_bias_stages(block_m: int, block_n: int, stages: int, head_dim: int) -> int:
    """Depth of each math warpgroup's TMA ring of 16-bit bias tiles beside a flash_ws90 program's Q/K/V tiles: 2
    where shared memory holds it (d128 with 128-key tiles: 160 KB of Q/K/V and 2 x 32 KB of both warpgroups'
    bias tiles, 224 of the 227 KB; such a kernel stores O without a layout conversion, so the compiler needs no
    scratch), else 1 (O stored through the conversion's 16 KB scratch), 0 where not even one fits (the kernel then
    reads the bias by pointer loads)."""
    base = _ws90_tile_bytes(block_m, block_n, stages, head_dim)
    per_stage = 2 * (2 * block_m * block_n)
    if base + 2 * per_stage <= _SMEM_LIMIT - _WS90_BARRIER_BYTES:
        return 2
    if base + per_stage <= _SMEM_LIMIT - _SMEM_SCRATCH:  # one stage: O goes through the coalescing conversion
        return 1
    return 0


def _check_ws90(genome: KernelGenome, spec: AttentionSpec) -> None:
    """What the Gluon forward implements: 16-bit attention, causal or not, unmasked or with an additive bias or
    ALiBi, equal q/v head dims of 64 or 128, no split-K, its fixed shape (two 4-warp math warpgroups of 64 rows)
    and no flash_v1-only forward knob."""
    problems = []
    if spec.dtype not in ("float16", "bfloat16"):
        problems.append(f"dtype {spec.dtype} (16-bit only)")
    if spec.mask not in WS90_MASKS or spec.window:
        window = " + window" if spec.window else ""
        problems.append(f"mask {spec.mask.value}{window} (none, bias, alibi; causal or not)")
    if spec.head_dim not in WS90_HEAD_DIMS or (spec.v_head_dim or spec.head_dim) != spec.head_dim:
        problems.append(f"head dims {spec.head_dim}/{spec.v_head_dim} (equal, one of {WS90_HEAD_DIMS})")
    if genome.block_m != WS90_BLOCK_M or genome.num_warps != 4 or genome.block_n not in WS90_BLOCK_N:
        problems.append(f"tiles {genome.block_m}x{genome.block_n}/{genome.num_warps} warps "
                        f"({WS90_BLOCK_M} x {WS90_BLOCK_N}, 4 warps)")
    smem = ws90_smem_bytes(genome, spec.head_dim)
    if genome.num_stages < 2 or smem > _SMEM_LIMIT - _SMEM_SCRATCH:
        problems.append(f"{genome.num_stages} stages ({smem} bytes of shared memory)")
    flash_v1_only = [k.name for k in KNOBS if k.ws90 == "refused" and getattr(genome, k.name) != k.default]
    if flash_v1_only:
        problems.append(f"flash_v1 forward knobs {flash_v1_only}")
    if problems:
        raise ValueError("flash_ws90 cannot render: " + "; ".join(problems))


def fused_bwd_problem(spec: AttentionSpec) -> str | None:
    """Why the fused Gluon backward (bwd_ws90) cannot serve ``spec``, or None: it implements 16-bit q/k/v with equal
    head dims of 64 or 128 (two column halves per tile), no mask but causal, no window, no dropout."""
    problems = []
    if spec.dtype not in ("float16", "bfloat16"):
        problems.append(f"dtype {spec.dtype} (16-bit only)")
    if spec.mask is not MaskKind.NONE or spec.window:
        problems.append(f"mask {spec.mask.value}{' + window' if spec.window else ''} (none; causal or not)")
    if spec.head_dim not in WS90_HEAD_DIMS or (spec.v_head_dim or spec.head_dim) != spec.head_dim:
        problems.append(f"head dims {spec.head_dim}/{spec.v_head_dim} (equal, one of {WS90_HEAD_DIMS})")
    return "; ".join(problems) or None


def check_renderable(genome: KernelGenome, spec: AttentionSpec) -> None:
    """Raise ValueError naming the first knob or spec field the genome's template cannot honour."""
    if genome.template not in TEMPLATES:
        raise ValueError(f"unknown kernel template {genome.template!r}; available: {TEMPLATES}")
    if genome.template == "flash_ws90":
        _check_ws90(genome, spec)
    if genome.bwd_ws90 and (problem := fused_bwd_problem(spec)) is not None:
        raise ValueError(f"bwd_ws90 (the fused Gluon backward) cannot render: {problem}")
    rows_unaligned = spec.head_dim % 8 or (spec.v_head_dim or 0) % 8
    if genome.use_tma and (spec.dtype not in ("float16", "bfloat16") or rows_unaligned):
        raise ValueError(f"use_tma needs 16-bit q/k/v with head dims divisible by 8 (16-byte rows); got {spec.dtype}, "
                         f"{spec.head_dim}/{spec.v_head_dim}")
    if spec.dropout_p > 0:
        raise ValueError(f"dropout (p={spec.dropout_p}) is not implemented by avo kernels")
    if max(spec.head_dim, spec.v_head_dim or 0) > MAX_HEAD_DIM:
        raise ValueError(f"head dim {spec.head_dim}/{spec.v_head_dim} exceeds {MAX_HEAD_DIM}")


def render(genome: KernelGenome, spec: AttentionSpec) -> KernelSource:
    """Render ``genome`` for ``spec`` from the installed templates: forward + split-kv reduce + backward kernels in
    one module. The one genome -> source function (search, promotion, baselines and template-tier records)."""
    check_renderable(genome, spec)
    family = "flash_v1"  # every template's module starts as flash_v1's (flash_ws90 keeps its backward)
    fwd = _template_text(f"{family}_fwd.py")
    if not _CONSTANTS_RE.search(fwd):
        raise RuntimeError(f"template {family}_fwd.py lost its GENOME-CONSTANTS block")
    values = genome.to_dict()
    fwd = _CONSTANTS_RE.sub(lambda _: constants_block(values), fwd, count=1)
    bwd = _strip_docstring_and_imports(_template_text(f"{family}_bwd.py"))
    source = f"{fwd.rstrip()}\n\n\n# ---- backward ({family}_bwd.py) ----\n{bwd}"
    if genome.template == "flash_ws90":
        ws = _gluon_dialect(_template_text("flash_ws90_fwd.py"))
        source = f"{source.rstrip()}\n\n\n# ---- Hopper forward (flash_ws90_fwd.py) ----\n{ws}"
        grid = "ws90_persistent" if genome.persistent else "ws90"
    elif genome.persistent:
        grid = "persistent"
    elif genome.kv_splits > 1:
        grid = "splitkv"
    else:
        grid = "fwd"
    if genome.bwd_ws90:  # its Gluon imports stay (a repeated import is harmless; flash_v1's module has none)
        fused = _strip_docstring_and_imports(_gluon_dialect(_template_text(WS90_BWD_FILE)))
        source = f"{source.rstrip()}\n\n\n# ---- Hopper fused backward ({WS90_BWD_FILE}) ----\n{fused}"
    entry = WS90_ENTRY if genome.template == "flash_ws90" else FWD_ENTRY
    return KernelSource(source=source, entry_point=entry, bwd_entry_point=BWD_ENTRY,
                        launch=LaunchConfig.from_dict(launch_dict(values, grid)))


def _is_cpu(hardware: HardwareKey | None) -> bool:
    if hardware is None:
        import torch

        return not torch.cuda.is_available()
    return hardware.vendor == "cpu"


_DEFAULT_SM_COUNT = 132  # H100 SXM; used when the hardware key is not given


def _decode_splits(spec: AttentionSpec, block_m: int, pack: bool, hardware: HardwareKey | None) -> int:
    """Split-K for decode: one query tile per (batch, head) leaves most SMs idle and a memory-bound kernel needs
    every SM streaming K/V. One split per 512 keys (up to 16), doubled while the grid still fits one wave of the
    SMs, never a split under 256 keys, at most 64 (the reduction reads every split's partial output).
    Measured on the H100: 1x32 heads x 32768 keys runs 22% faster at 16 splits (one wave) than at 64 (two programs
    per SM); 8x8192 and 32x4096, already several waves deep, are best at one split per 512 keys."""
    heads = spec.kv_heads if pack else spec.q_heads
    rows = spec.q_len * spec.gqa_group if pack else spec.q_len
    tiles = spec.batch * heads * -(-rows // block_m)
    sms = hardware.sm_count if hardware is not None and hardware.sm_count > 0 else _DEFAULT_SM_COUNT
    splits = 1 << max(0, min(4, (spec.kv_len // 512).bit_length() - 1))
    while tiles * splits * 2 <= sms and splits < 64:
        splits *= 2
    while splits > 1 and spec.kv_len // splits < 256:
        splits //= 2
    return splits


def _gluon_dialect(text: str) -> str:
    """The template is written against Triton 3.6's Gluon; later releases renamed the TMA load
    (``tma.async_copy_global_to_shared`` -> ``tma.async_load``, 3.9): render the name this Triton has."""
    try:
        from triton.experimental.gluon.language.nvidia.hopper import tma
    except ImportError:
        return text
    if hasattr(tma, "async_load"):  # 3.9 keeps the old name only to raise "has been removed"
        text = text.replace("tma.async_copy_global_to_shared(", "tma.async_load(")
    return text


@functools.cache
def gluon_hopper_available() -> bool:
    """True when this Triton ships Gluon's Hopper API (warpgroup MMA, TMA, mbarriers, warp_specialize)."""
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia import hopper
    except ImportError:
        return False
    return hasattr(gl, "warp_specialize") and hasattr(hopper, "warpgroup_mma")


# The Gluon forward is launched from Python through an op Inductor cannot inline (op.py): ~0.1 ms of host time
# per compiled call on the H100's host. At 69 GFLOP per call (4x32x1024x1024 d128, ~0.12 ms of kernel) the call is
# GPU-bound and flash_ws90 beats flash_v1 (514 vs 435 TFLOP/s, H100); below this much work the launch would show,
# so the default stays flash_v1 (inlined by Inductor).
WS90_MIN_FLOPS = 5e10


def ws90_suits(spec: AttentionSpec, hardware: HardwareKey | None) -> bool:
    """Whether the default genome for ``spec`` is flash_ws90: an sm_90 GPU, a Gluon with Hopper support, a
    prefill (not decode) spec the template renders with enough work per call to hide the host launch
    (WS90_MIN_FLOPS), and
      * no mask at head dim 128 (at head dim 64 flash_v1 measured ahead on the H100: 0.92-0.96x cuDNN against
        flash_ws90's 0.84-0.95x, so the search, not the default, decides there);
      * an additive bias whose rows a contiguous 16-bit bias keeps 16-byte aligned (kv_len a multiple of 8), at
        head dim 64 or 128: streamed through TMA into QK^T's accumulator, 1.13-1.2x flash_v1 on the H100. Biases
        TMA cannot read take pointer loads, which measured 0.92x flash_v1;
    not ALiBi: 0.93x flash_v1 at d64 on the H100."""
    if hardware is None:
        import torch

        if not torch.cuda.is_available():
            return False
        hardware = HardwareKey.current()
    if hardware.vendor != "nvidia" or tuple(hardware.capability) != (9, 0) or spec.is_decode:
        return False
    if spec.mask is MaskKind.NONE:
        if spec.head_dim != 128:
            return False
    elif spec.mask is not MaskKind.BIAS or spec.kv_len % 8:
        return False
    if not gluon_hopper_available():
        return False
    if spec.flops() < WS90_MIN_FLOPS:
        return False
    try:
        _check_ws90(default_genome(spec, hardware, "flash_ws90"), spec)  # the genome the default would be
    except ValueError:
        return False
    return True


def default_genome(spec: AttentionSpec, hardware: HardwareKey | None = None,
                   template: str | None = None) -> KernelGenome:
    """A plain, untuned genome valid for ``spec`` on ``hardware`` (default: this process's device).

    ``template`` pins the family (None: flash_ws90 where :func:`ws90_suits`, else flash_v1); a pinned flash_ws90
    that cannot render ``spec`` is reported by ``render``/``check_renderable``, not here.

    CPU (Triton interpreter): 16-wide tiles, the interpreter's cost grows with tile area. GPU: the Triton
    tutorial's H100 tiles by head dim (128x64 up to d=128, 64x32 above, where shared memory runs out), causal
    tiles heaviest first, and the backward tiles an H100 A/B picked (below).
    Decode (q_len <= 16) with GQA/MQA packs each kv head's q heads into one tile (pack_gqa): every q head
    otherwise re-reads its group's K/V, the whole cost of a memory-bound decode.
    """
    if template not in (None, *TEMPLATES):
        raise ValueError(f"unknown kernel template {template!r}; available: {TEMPLATES}")
    pack = spec.is_decode and spec.q_heads != spec.kv_heads
    if _is_cpu(hardware) and template != "flash_ws90":  # a pinned flash_ws90 stays one (it runs on sm_90 only)
        return KernelGenome(block_m=16, block_n=16, num_warps=4, num_stages=1, pack_gqa=pack, bwd_block_m=16,
                            bwd_block_n=16, bwd_num_warps=4, bwd_num_stages=1,
                            alibi_bound=spec.mask is MaskKind.ALIBI)
    d = max(spec.head_dim, spec.v_head_dim or spec.head_dim)
    wide = spec.dtype == "float32" or d > 128
    block_m, block_n = (64, 32) if wide else (128, 64)
    warps, stages = (4, 2) if wide else ((8, 3) if d > 64 else (4, 3))
    if not wide and not spec.is_decode and spec.mask is MaskKind.NONE:
        # Dense prefill tiles (H100 A/B): 64x64 / 4 warps where there is little work per head (d<=64 causal:
        # +4-12%; d128 at N<=1024: +6.5%), 8 warps and 4 stages for d<=64 without a mask structure (+7%).
        if (d <= 64 and (spec.causal or spec.window)) or (d > 64 and spec.kv_len <= 1024):
            block_m, block_n, warps, stages = 64, 64, 4, 3
        elif d <= 64:
            warps, stages = 8, 4
    elif not wide and not spec.is_decode and spec.mask is MaskKind.ALIBI and d <= 64:
        # Bounded ALiBi (alibi_bound): 64-row tiles narrow their key span more tightly (+1-4% over 128x64 at
        # 8x16x2048 d64, H100).
        block_m, block_n, warps, stages = 64, 64, 4, 3
    # Backward (H100 A/B, fwd+bwd): dK/dV from S^T with 64x64 tiles at d=128 (2.5x 32x64 non-transposed), the
    # tutorial's 32x128 with dq on swapped 128x32 tiles at d<=64 (1.4x).
    if wide:
        bwd_m, bwd_n, bwd_warps, bwd_stages, transposed, swap = 16, 32, 8, 1, False, False
    elif d > 64:
        bwd_m, bwd_n, bwd_warps, bwd_stages, transposed, swap = 64, 64, 4, 2, True, False
    else:
        bwd_m, bwd_n, bwd_warps, bwd_stages, transposed, swap = 32, 128, 4, 3, True, True
    block_m = min(block_m, next_power_of_two(spec.q_len * spec.gqa_group if pack else spec.q_len))
    block_n = min(block_n, next_power_of_two(spec.kv_len))
    if template is None:
        template = "flash_ws90" if ws90_suits(spec, hardware) else "flash_v1"
    if template == "flash_ws90":
        # FlashAttention-3's shape: 64 rows per math warpgroup, 128-key tiles, 2 stages (3 do not fit shared
        # memory at d128); 1.01-1.04x cuDNN causal, 0.97-1.01x dense at d128 (H100). Persistent without a causal
        # mask: +1.4-8%; causal -9%, where the plain grid's heaviest-first tile order balances better.
        block_m, block_n, warps, stages, pack = WS90_BLOCK_M, 128, 4, 2, False
        persistent = not spec.causal and not spec.window
    else:
        persistent = False
    kv_splits = _decode_splits(spec, block_m, pack, hardware) if spec.is_decode and template == "flash_v1" else 1
    # ALiBi (flash_v1; see artifact.KNOBS): the one-sided key blocks' per-key term from the tensor cores, and no keys
    # the slopes provably silence.
    alibi_mma = alibi_bound = template == "flash_v1" and spec.mask is MaskKind.ALIBI
    return KernelGenome(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages, template=template,
                        kv_splits=kv_splits, pack_gqa=pack, heavy_first=True, persistent=persistent,
                        alibi_mma=alibi_mma, alibi_bound=alibi_bound,
                        bwd_block_m=min(bwd_m, next_power_of_two(spec.q_len)),
                        bwd_block_n=min(bwd_n, next_power_of_two(spec.kv_len)), bwd_num_warps=bwd_warps,
                        bwd_num_stages=bwd_stages, bwd_transposed=transposed, bwd_dq_swap=swap)
