"""Compile a rendered module's fused Gluon backward (bwd_ws90) for sm_90a without a GPU; print what the test
checks, as JSON. Run in a fresh process (the suite's TRITON_INTERPRET=1 turns Triton's library functions into
interpreter objects that cannot be compiled).
Usage: python tests/_ws90_bwd_compile.py TEMPLATE HEAD_DIM CAUSAL(0|1) DTYPE
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: benchmarks is not installed

from avo_inductor.kernels.loader import load_source
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec, HardwareKey
from benchmarks.probes.ptx_digest import compile_ws90_bwd

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)


def main(template: str, head_dim: int, causal: bool, dtype: str) -> dict:
    spec = AttentionSpec(2, 8, 2, 1000, 1000, head_dim, dtype=dtype, causal=causal, needs_grad=True)
    rk = render(default_genome(spec, H100, template).replace(bwd_ws90=True), spec)
    fn = load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict).functions.bwd_ws90
    compiled = compile_ws90_bwd(fn, spec)
    ptx = compiled.asm["ptx"]
    return {"shared": compiled.metadata.shared, "reduce_add": "cp.reduce.async.bulk.tensor" in ptx,
            "wgmma": ptx.count("wgmma.mma_async"), "tma": "cp.async.bulk.tensor" in ptx,
            "reqntid": "reqntid 256" in ptx, "cubin_bytes": len(compiled.asm["cubin"])}


if __name__ == "__main__":
    template, d, c, dtype = sys.argv[1:5]
    print(json.dumps(main(template, int(d), c == "1", dtype)))
