"""Compile a rendered flash_ws90 forward for sm_90a without a GPU and print what the test checks, as JSON.

Run as a script in a fresh process: the test suite sets TRITON_INTERPRET=1, under which Triton's own library
functions (``gl.max`` ...) are interpreter objects that cannot be compiled.
Usage: python tests/_ws90_compile.py HEAD_DIM BLOCK_N STAGES CAUSAL(0|1) MASK_KIND(0|1|3) PERSISTENT(0|1)
       [BIAS_TMA(0|1)]
"""
from __future__ import annotations

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import mangle_type

from avo_inductor.kernels.loader import load_source
from avo_inductor.kernels.render import default_genome, render, ws90_bias_stages
from avo_inductor.spec import AttentionSpec, HardwareKey

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)


def main(head_dim: int, block_n: int, stages: int, causal: bool, mask_kind: int, persistent: bool,
         bias_tma: bool = False) -> dict:
    spec = AttentionSpec(2, 8, 8, 1000, 1000, head_dim, causal=causal)
    genome = default_genome(spec, H100, "flash_ws90").replace(block_n=block_n, num_stages=stages,
                                                              persistent=persistent)
    rk = render(genome, spec)
    fn = load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict).functions.fwd
    q = torch.empty(1, 2, 256, head_dim, dtype=torch.bfloat16)

    def descriptor(rows: int, cols: int = head_dim) -> str:
        block = [1, 1, rows, cols]
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return mangle_type(TensorDescriptor(q, list(q.shape), list(q.stride()), block, layout))

    signature = dict(Q_DESC=descriptor(64), K_DESC=descriptor(block_n), V_DESC=descriptor(block_n), O="*bf16",
                     LSE="*fp32", MASK="*fp32" if mask_kind == 3 else "*bf16", stride_ob="i32", stride_oh="i32",
                     stride_om="i32", stride_mb="i32", stride_mh="i32", stride_mm="i32", stride_mn="i32", BATCH="i32", H_Q="i32",
                     GROUP="i32", N_Q="i32", N_KV="i32", qk_scale="fp32")
    bias_stages = ws90_bias_stages(64, block_n, stages, head_dim) if bias_tma else 1
    constants = dict(BLOCK_M=64, BLOCK_N=block_n, HEAD_D=head_dim, STAGES=stages, IS_CAUSAL=causal,
                     MASK_KIND=mask_kind, BIAS_TMA=bias_tma, BIAS_STAGES=bias_stages, BIAS_BCAST_B=False,
                     BIAS_BCAST_H=bias_tma, num_warps=4)
    if bias_tma:
        signature["B_DESC"] = descriptor(64, block_n)
    else:
        constants["B_DESC"] = None
    signature.update({name: "constexpr" for name in constants})
    signature = {name: signature[name] for name in fn.arg_names}  # the kernel's parameter order
    source = GluonASTSource(fn, signature, {(fn.arg_names.index(n),): v for n, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = compiled.asm["ptx"]
    return {"shared": compiled.metadata.shared, "math_regs_240": "setmaxnreg.inc.sync.aligned.u32 \t240;" in ptx,
            "wgmma": "wgmma.mma_async" in ptx, "tma": "cp.async.bulk.tensor" in ptx,
            "cubin_bytes": len(compiled.asm["cubin"]), "bias_stages": bias_stages}


if __name__ == "__main__":
    d, n, s, c, kind, persistent = (int(a) for a in sys.argv[1:7])
    print(json.dumps(main(d, n, s, bool(c), kind, bool(persistent), len(sys.argv) > 7 and sys.argv[7] == "1")))
