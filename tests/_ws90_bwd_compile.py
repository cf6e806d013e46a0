"""Compile a rendered module's fused Gluon backward (bwd_ws90) for sm_90a without a GPU; print what the test
checks, as JSON. Run in a fresh process (the suite's TRITON_INTERPRET=1 turns Triton's library functions into
interpreter objects that cannot be compiled).
Usage: python tests/_ws90_bwd_compile.py TEMPLATE HEAD_DIM CAUSAL(0|1) DTYPE
"""
from __future__ import annotations

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

from avo_inductor.kernels import launch
from avo_inductor.kernels.loader import load_source
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec, HardwareKey

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)


def main(template: str, head_dim: int, causal: bool, dtype: str) -> dict:
    spec = AttentionSpec(2, 8, 2, 1000, 1000, head_dim, dtype=dtype, causal=causal, needs_grad=True)
    genome = default_genome(spec, H100, template).replace(bwd_ws90=True)
    rk = render(genome, spec)
    fn = load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict).functions.bwd_ws90
    t = torch.empty(1, 2, 256, head_dim, dtype=getattr(torch, dtype))
    acc = torch.empty(1, 2, 256, head_dim, dtype=torch.float32)
    half = head_dim // 2
    bm, bn = launch.WS90_BWD_BLOCK_M, launch.WS90_BWD_BLOCK_N

    def descriptor(x: torch.Tensor, rows: int, layout=None) -> str:
        block = (1, 1, rows, half)
        spec_ = launch.DescriptorSpec("", block, layout or launch._ws90_layout(block, x.dtype))
        return mangle_type(launch._ws90_descriptor(x, spec_))

    signature = dict(Q_DESC=descriptor(t, bm), K_DESC=descriptor(t, 2 * bn), V_DESC=descriptor(t, 2 * bn),
                     DO_DESC=descriptor(t, bm), DQ_DESC=descriptor(acc, bm, launch._fp32_unswizzled()),
                     LSE="*fp32", DELTA="*fp32", DK=mangle_type(t), DV=mangle_type(t),
                     **{f"stride_d{x}{y}": "i32" for x in "kv" for y in "bhn"}, BATCH="i32", H_Q="i32", GROUP="i32",
                     N_Q="i32", N_KV="i32", qk_scale="fp32", sm_scale="fp32")
    signature["DK"] = signature["DV"] = "*bf16" if dtype == "bfloat16" else "*fp16"
    constants = dict(BLOCK_M=bm, BLOCK_N=bn, HEAD_D=head_dim, STAGES=launch.WS90_BWD_STAGES, IS_CAUSAL=causal,
                     num_warps=4)
    signature.update({name: "constexpr" for name in constants})
    signature = {name: signature[name] for name in fn.arg_names}
    source = GluonASTSource(fn, signature, {(fn.arg_names.index(n),): v for n, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = compiled.asm["ptx"]
    return {"shared": compiled.metadata.shared, "reduce_add": "cp.reduce.async.bulk.tensor" in ptx,
            "wgmma": ptx.count("wgmma.mma_async"), "tma": "cp.async.bulk.tensor" in ptx,
            "reqntid": "reqntid 256" in ptx, "cubin_bytes": len(compiled.asm["cubin"])}


if __name__ == "__main__":
    template, d, c, dtype = sys.argv[1:5]
    print(json.dumps(main(template, int(d), c == "1", dtype)))
