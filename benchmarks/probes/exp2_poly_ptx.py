"""Probe: does exp2_poly move softmax work off MUFU? Instruction counts of the flash_v1 forward for sm_90, no GPU.

Compiles the forward (as ptx_digest.py does: CPU only, Triton's own binder, GPUTarget cuda 90, Triton's bundled
ptxas) for one spec at each exp2_poly setting and counts, in the PTX and in the SASS (cuobjdump of the cubin), the
MUFU exp2 (``ex2.approx`` / ``MUFU.EX2``), the fp32 arithmetic of the FMA pipes, the integer ops of the exponent add
and the shared-memory traffic (a column split the compiler could not keep in registers would show up as extra
shared-memory stores/loads and barriers). Static counts: a loop body counts once.
Usage: python -m benchmarks.probes.exp2_poly_ptx [--spec B,H,HKV,N,D[,causal]] [--dtype bfloat16] [--dump DIR]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec

from ..common import print_table
from .ptx_digest import H100, _fwd_args, _load, compile_asm

SETTINGS = (0, 25, 50, 100)
PTX_COUNTS = {  # label -> PTX opcode pattern (start of an instruction)
    "ex2.approx": r"ex2\.approx",
    "fma.f32": r"fma\.rn(\.ftz)?\.f32",
    "add/sub.f32": r"(add|sub)(\.rn)?(\.ftz)?\.f32",
    "mul.f32": r"mul(\.rn)?(\.ftz)?\.f32",
    "max.f32": r"max(\.NaN)?(\.ftz)?\.f32",
    "int shl/add": r"(shl\.b32|mad\.lo\.s32|add\.s32)",
    "st.shared": r"st\.shared",
    "bar.sync": r"bar\.sync",
}
SASS_COUNTS = {  # label -> SASS opcode pattern (after the predicate)
    "MUFU.EX2": r"MUFU\.EX2",
    "FFMA": r"FFMA\b",
    "FADD": r"FADD\b",
    "FMUL": r"FMUL\b",
    "FMNMX": r"FMNMX\b",
    "LEA": r"LEA\b",  # shift-and-add: ptxas fuses the exponent add (j << 23) + bits(p) into one
    "STS": r"STS\b",
    "BAR": r"BAR\b",
}


def count(lines: list[str], patterns: dict[str, str]) -> dict[str, int]:
    """Static instruction counts per label of ``patterns`` (lines: one instruction each, predicates stripped)."""
    return {label: sum(1 for ln in lines if re.match(pattern, ln)) for label, pattern in patterns.items()}


def sass_lines(cubin: bytes) -> list[str]:
    """The SASS instructions of ``cubin`` (cuobjdump bundled with Triton), predicates stripped."""
    import triton

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-sass", str(path)], check=True,
                              capture_output=True, text=True).stdout
    found = (re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9._]*[^;]*);", ln) for ln in
             text.splitlines())
    return [m.group(1) for m in found if m]


def forward_asm(spec: AttentionSpec, poly: int) -> dict[str, Any]:
    g = default_genome(spec, H100).replace(exp2_poly=poly)
    kernel = render(g, spec)
    with tempfile.TemporaryDirectory() as tmp:
        module = _load(kernel.source, Path(tmp))
        return compile_asm(module.attn_fwd, _fwd_args(spec, g))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="8,16,16,2048,64", help="B,H,HKV,N,D[,causal]")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--dump", type=Path, help="write each PTX here")
    args = parser.parse_args()
    parts = args.spec.split(",")
    try:
        b, h, hkv, n, d = (int(p) for p in parts[:5])
        spec = AttentionSpec(b, h, hkv, n, n, d, dtype=args.dtype, causal="causal" in parts[5:])
    except ValueError as exc:
        raise SystemExit(f"--spec must be B,H,HKV,N,D[,causal] with a 16-bit --dtype: {exc}") from None
    ptx_rows, sass_rows = [], []
    for poly in SETTINGS:
        asm = forward_asm(spec, poly)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"attn_fwd_exp2_poly{poly}.ptx").write_text(asm["ptx"], encoding="utf-8")
        ptx_rows.append({"exp2_poly": poly, **count([ln.strip() for ln in asm["ptx"].splitlines()], PTX_COUNTS)})
        sass_rows.append({"exp2_poly": poly, **count(sass_lines(asm["cubin"]), SASS_COUNTS)})
    g = default_genome(spec, H100)
    print(f"attn_fwd for sm_90, {spec.to_text()}, default genome ({g.block_m}x{g.block_n} tiles, {g.num_warps} "
          f"warps), static instruction counts\nPTX:")
    print_table(ptx_rows, ["exp2_poly", *PTX_COUNTS])
    print("SASS:")
    print_table(sass_rows, ["exp2_poly", *SASS_COUNTS])


if __name__ == "__main__":
    main()
