"""Device probe: correctness and timing of the Gluon warp-specialized forward against cuDNN SDPA."""
import math, sys, os, json, itertools
import torch
import torch.nn.functional as F
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
sys.path.insert(0, os.path.dirname(__file__))
from attn_ws import attn_fwd_ws

LOG2E = 1.4426950408889634

def ws_forward(q, k, v, causal, BM=64, BN=128, STAGES=2, warps=4, heavy=True, NUM_WG=2, PP=True, REGS=240):
    B, H, N, D = q.shape
    HKV, NK = k.shape[1], k.shape[2]
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    def desc(t, blk):
        lay = gl.NVMMASharedLayout.get_default_for([1, 1, blk, D], gdt)
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, blk, D], lay)
    o = torch.empty_like(q)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(N, BM * NUM_WG), B * H)
    attn_fwd_ws[grid](desc(q, BM), desc(k, BN), desc(v, BN), o, lse, o.stride(0), o.stride(1), o.stride(2),
                      H, H // HKV, N, NK, LOG2E / math.sqrt(D),
                      BLOCK_M=BM, BLOCK_N=BN, HEAD_D=D, STAGES=STAGES, IS_CAUSAL=causal,
                      HEAVY_FIRST=heavy and causal, NUM_WG=NUM_WG, PINGPONG=PP, CONSUMER_REGS=REGS, num_warps=warps)
    return o, lse

def reference(q, k, v, causal):
    G = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(G, 1); vv = v.double().repeat_interleave(G, 1)
    s = q.double() @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    nq, nk = q.shape[2], k.shape[2]
    if causal:
        keep = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
        s = s.masked_fill(~keep, float('-inf'))
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ vv).nan_to_num(0.0), lse

def check():
    rows = []
    for (B, H, HKV, NQ, NK, D, causal) in [(2, 4, 4, 1, 1, 128, False), (2, 4, 2, 17, 17, 128, True),
                                           (1, 4, 4, 113, 113, 64, False), (2, 4, 1, 1000, 1000, 128, True),
                                           (1, 2, 2, 1000, 1000, 64, True), (1, 2, 2, 300, 777, 128, True),
                                           (1, 2, 2, 777, 300, 128, True), (2, 8, 8, 2048, 2048, 128, False)]:
        for cfg in ([dict(BN=128, STAGES=2), dict(BN=64, STAGES=3, PP=False), dict(BM=128, BN=128, STAGES=2, NUM_WG=1, warps=8)] if D == 128 else [dict(BN=128, STAGES=3), dict(BM=128, BN=64, STAGES=3)]):
            torch.manual_seed(0)
            q = torch.randn(B, H, NQ, D, device='cuda', dtype=torch.bfloat16)
            k = torch.randn(B, HKV, NK, D, device='cuda', dtype=torch.bfloat16)
            v = torch.randn(B, HKV, NK, D, device='cuda', dtype=torch.bfloat16)
            o, lse = ws_forward(q, k, v, causal, **cfg)
            ro, rl = reference(q, k, v, causal)
            fin = torch.isfinite(rl)
            err = (o.double() - ro).abs().nan_to_num(1e9).max().item()
            lerr = (lse.double()[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
            ok = err < 2e-2 and lerr < 1e-3 and bool((lse[~fin] == float('inf')).all())
            rows.append((B, H, HKV, NQ, NK, D, causal, cfg['BN'], err, lerr, ok))
            print(f"check B{B} H{H}/{HKV} Nq{NQ} Nk{NK} d{D} causal={causal} BN{cfg['BN']}: err {err:.2e} lse {lerr:.2e} {'OK' if ok else 'FAIL'}", flush=True)
    return all(r[-1] for r in rows)

def bench():
    specs = [(4,32,32,1024,128,False),(4,32,32,4096,128,False),(2,32,32,8192,128,False),(4,32,32,4096,128,True),
             (2,32,32,8192,128,True),(4,32,8,4096,128,True),(8,16,16,2048,64,False),(8,16,16,2048,64,True),
             (16,12,12,1024,64,True)]
    table = []
    for B, H, HKV, N, D, causal in specs:
        q = torch.randn(B, H, N, D, device='cuda', dtype=torch.bfloat16)
        k = torch.randn(B, HKV, N, D, device='cuda', dtype=torch.bfloat16)
        v = torch.randn(B, HKV, N, D, device='cuda', dtype=torch.bfloat16)
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        from torch.nn.attention import sdpa_kernel, SDPBackend
        def cudnn():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=HKV != H)
        res = {'cudnn': triton.testing.do_bench_cudagraph(cudnn, rep=200)}
        cfgs = ([dict(BN=128, STAGES=2), dict(BN=64, STAGES=4), dict(BN=64, STAGES=3)] if D == 128 else
                [dict(BN=128, STAGES=2), dict(BN=128, STAGES=3), dict(BN=128, STAGES=4), dict(BN=64, STAGES=4)])
        for cfg in cfgs:
            name = f"wg{cfg.get('NUM_WG',2)}x{cfg.get('BM',64)}_bn{cfg['BN']}_s{cfg['STAGES']}{'_pp' if cfg.get('PP',True) and cfg.get('NUM_WG',2)==2 else ''}"
            try:
                res[name] = triton.testing.do_bench_cudagraph(lambda: ws_forward(q, k, v, causal, **cfg), rep=200)
            except Exception as e:
                print(name, 'failed', type(e).__name__, str(e)[:300], flush=True)
        tf = {n: flops / (ms * 1e-3) / 1e12 for n, ms in res.items()}
        best = max((n for n in tf if n != 'cudnn'), key=lambda n: tf[n], default=None)
        table.append((B, H, HKV, N, D, causal, tf, best))
        print(f"B{B} H{H}/{HKV} N{N} d{D} causal={causal}: " + ' '.join(f"{n}={t:.0f}" for n, t in tf.items()), flush=True)
    print('\nspec                         cudnn   best_ws  ratio  best')
    g = []
    for B, H, HKV, N, D, causal, tf, best in table:
        r = tf[best] / tf['cudnn'] if best else float('nan'); g.append(r)
        print(f"{B},{H},{HKV},{N},{D},{'causal' if causal else 'none':6s}   {tf['cudnn']:5.0f}   {tf.get(best, 0):6.0f}  {r:5.3f}  {best}")
    print('geomean ws/cudnn', math.exp(sum(map(math.log, g)) / len(g)))

if __name__ == '__main__':
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    ok = check()
    print('correctness', 'OK' if ok else 'FAIL')
    bench()
