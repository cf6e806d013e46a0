"""Kernel level: avo attention vs SDPA (default/cuDNN, flash, efficient), FlexAttention and Inductor's own fusion.

Per spec: TFLOP/s from analytic FLOPs (causal halves them), each provider timed with do_bench (median, L2
flushed) in this one process, avo's output checked against SDPA first. avo runs the tuned record from the store
when there is one ("avo"), else the plain untuned template ("avo-untuned").
Usage: python benchmarks/attention.py [--suite issue4|core|all] [--train] [--specs "4,32,32,4096,128,causal;..."]
Writes benchmarks/results/<gpu>/attention[-train].csv and .png; prints a table last.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, bar_plot, gpu_slug, print_table, time_ms, write_csv  # noqa: E402

from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind  # noqa: E402

SUITES = {
    "issue4": "4,32,32,4096,128,none;4,32,32,4096,128,causal;8,16,16,2048,64,none;8,16,16,2048,64,causal;"
              "4,32,32,4096,128,bias",
    "core": "4,32,32,1024,128,none;4,32,32,4096,128,none;2,32,32,8192,128,none;4,32,32,4096,128,causal;"
            "2,32,32,8192,128,causal;4,32,8,4096,128,causal;8,16,16,2048,64,none;8,16,16,2048,64,causal;"
            "16,12,12,1024,64,causal",
    "masked": "4,32,32,4096,128,bias;8,16,16,2048,64,padding;4,32,32,4096,128,window1024;8,16,16,2048,64,alibi",
    "decode": "8,32,8,1,8192,128,none;1,32,8,1,32768,128,none;32,32,8,1,4096,128,none",
}
SUITES["all"] = ";".join(SUITES[k] for k in ("core", "masked", "decode"))


def parse_spec(text: str, dtype: str, train: bool) -> AttentionSpec:
    """"B,H,HKV,N,D,mask" or "B,H,HKV,NQ,NK,D,mask"; mask: none|causal|bias|padding|alibi|windowW."""
    parts = text.strip().split(",")
    mask = parts[-1]
    nums = [int(p) for p in parts[:-1]]
    if len(nums) == 5:
        b, h, hkv, n, d = nums
        nq = nk = n
    elif len(nums) == 6:
        b, h, hkv, nq, nk, d = nums
    else:
        raise ValueError(f"bad spec {text!r}: expected B,H,HKV,N,D,mask or B,H,HKV,NQ,NK,D,mask")
    causal, window, kind = mask == "causal", None, MaskKind.NONE
    if mask.startswith("window"):
        causal, window = True, int(mask[len("window"):])
    elif mask in ("bias", "padding", "alibi"):
        kind = MaskKind(mask)
    elif mask not in ("none", "causal"):
        raise ValueError(f"bad mask {mask!r} in spec {text!r}")
    return AttentionSpec(b, h, hkv, nq, nk, d, dtype=dtype, causal=causal, window=window, mask=kind, needs_grad=train)


def avo_provider(spec: AttentionSpec, inputs: Any) -> tuple[str, Callable[..., torch.Tensor]]:
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.op import register_kernel

    hit = KernelStore.from_settings().lookup(spec, HardwareKey.current())
    record = hit.record if hit is not None else baseline_record(spec)
    kernel_id = register_kernel(record)
    name = "avo" if hit is not None else "avo-untuned"

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.avo.attention(q, k, v, inputs.mask, kernel_id, spec.effective_scale, spec.causal,
                                       spec.window or 0, spec.mask.value)

    return name, run


def sdpa_provider(spec: AttentionSpec, inputs: Any, backend: Any) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import sdpa_kernel

    from avo_inductor.kernels.reference import additive_mask

    dense = spec.mask is not MaskKind.NONE or spec.window is not None
    mask = additive_mask(spec.batch, spec.q_heads, spec.q_len, spec.kv_len, causal=spec.causal, window=spec.window,
                         mask_kind=spec.mask.value, mask=inputs.mask, dtype=spec.torch_dtype,
                         device=inputs.q.device) if dense else None
    gqa = spec.q_heads != spec.kv_heads

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = sdpa_kernel(backend) if backend is not None else _null()
        with ctx:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=spec.causal and not dense,
                                                  scale=spec.effective_scale, enable_gqa=gqa)

    return run


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def flex_provider(spec: AttentionSpec, inputs: Any) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    off, window, mask = spec.kv_len - spec.q_len, spec.window, inputs.mask

    def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        keep = kv_idx <= q_idx + off if spec.causal else kv_idx >= 0
        if window is not None:
            keep = keep & (kv_idx > q_idx + off - window)
        if spec.mask is MaskKind.PADDING:
            keep = keep & mask[b, kv_idx]
        return keep

    def score_mod(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        if spec.mask is MaskKind.BIAS:
            return score + mask[b if mask.shape[0] > 1 else 0, h if mask.shape[1] > 1 else 0, q_idx, kv_idx]
        if spec.mask is MaskKind.ALIBI:
            return score - mask[h] * (q_idx + off - kv_idx).abs()
        return score

    restricted = spec.causal or window is not None or spec.mask is MaskKind.PADDING
    block_mask = create_block_mask(mask_mod, spec.batch if spec.mask is MaskKind.PADDING else None, None,
                                   spec.q_len, spec.kv_len, device=inputs.q.device) if restricted else None
    compiled = torch.compile(flex_attention, dynamic=False)
    scored = spec.mask in (MaskKind.BIAS, MaskKind.ALIBI)
    gqa = spec.q_heads != spec.kv_heads

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return compiled(q, k, v, score_mod=score_mod if scored else None, block_mask=block_mask,
                        scale=spec.effective_scale, enable_gqa=gqa)

    return run


def inductor_provider(spec: AttentionSpec, inputs: Any) -> Callable[..., torch.Tensor]:
    """Hand-written attention under backend="inductor": what users get today without avo."""
    from avo_inductor.kernels.reference import additive_mask

    mask = additive_mask(spec.batch, spec.q_heads, spec.q_len, spec.kv_len, causal=spec.causal, window=spec.window,
                         mask_kind=spec.mask.value, mask=inputs.mask, dtype=torch.float32, device=inputs.q.device)
    rep = spec.q_heads // spec.kv_heads

    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-2, -1)).float() * spec.effective_scale
        if mask is not None:
            s = s + mask
        return torch.softmax(s, -1).to(q.dtype) @ v

    return torch.compile(attn, backend="inductor", dynamic=False)


def bench_spec(spec: AttentionSpec, train: bool, providers: list[str]) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    from avo_inductor.kernels.reference import make_inputs

    torch._dynamo.reset()
    inputs = make_inputs(spec, device="cuda" if torch.cuda.is_available() else "cpu", seed=0)
    q, k, v = (t.detach().requires_grad_(train) for t in (inputs.q, inputs.k, inputs.v))
    do = torch.randn_like(q[..., : spec.v_head_dim]) if train else None
    table: dict[str, Callable[..., torch.Tensor]] = {}
    avo_name, avo_fn = avo_provider(spec, inputs)
    table[avo_name] = avo_fn
    candidates = {"sdpa-default": lambda: sdpa_provider(spec, inputs, None),
                  "sdpa-cudnn": lambda: sdpa_provider(spec, inputs, SDPBackend.CUDNN_ATTENTION),
                  "sdpa-flash": lambda: sdpa_provider(spec, inputs, SDPBackend.FLASH_ATTENTION),
                  "sdpa-efficient": lambda: sdpa_provider(spec, inputs, SDPBackend.EFFICIENT_ATTENTION),
                  "flex": lambda: flex_provider(spec, inputs),
                  "inductor": lambda: inductor_provider(spec, inputs)}
    for name in providers:
        if name in candidates:
            table[name] = candidates[name]()
    row: dict[str, Any] = {"spec": spec.short(), "avo kernel": avo_name}
    flops = spec.flops(backward=train)
    reference = None
    for name, fn in table.items():
        try:
            out = fn(q, k, v)
            if reference is None and name.startswith("sdpa-default"):
                reference = out.detach()

            def step(fn: Callable[..., torch.Tensor] = fn) -> None:
                o = fn(q, k, v)
                if train:
                    o.backward(do)

            ms = time_ms(step)
            row[f"{name} TFLOP/s"] = flops / ms * 1e-9
            row[f"{name} ms"] = ms
        except Exception as exc:  # a provider that cannot run this spec (e.g. flash with a float mask)
            row[f"{name} TFLOP/s"] = None
            row[f"{name} error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    avo_out = table[avo_name](q, k, v).detach()
    if reference is not None:
        finite = torch.isfinite(reference)
        row["avo max|err| vs sdpa"] = float((avo_out.float() - reference.float())[finite].abs().max())
    avo_t = row.get(f"{avo_name} TFLOP/s")
    for base in ("sdpa-default", "flex", "inductor"):
        if avo_t and row.get(f"{base} TFLOP/s"):
            row[f"avo/{base}"] = avo_t / row[f"{base} TFLOP/s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", default="issue4", choices=sorted(SUITES))
    parser.add_argument("--specs", default=None, help="';'-separated specs, overrides --suite")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--train", action="store_true", help="time forward + backward")
    parser.add_argument("--providers", default="sdpa-default,sdpa-cudnn,sdpa-flash,sdpa-efficient,flex,inductor")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    specs = [parse_spec(s, args.dtype, args.train) for s in (args.specs or SUITES[args.suite]).split(";") if s.strip()]
    providers = args.providers.split(",")
    rows = []
    for spec in specs:
        row = bench_spec(spec, args.train, providers)
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = args.out or RESULTS / gpu_slug()
    stem = "attention-train" if args.train else "attention"
    write_csv(out / f"{stem}.csv", rows)
    names = ["avo", "avo-untuned", *providers]
    series = {n: [r.get(f"{n} TFLOP/s") for r in rows] for n in names if any(r.get(f"{n} TFLOP/s") for r in rows)}
    bar_plot(out / f"{stem}.png", [r["spec"] for r in rows], series, "TFLOP/s",
             f"attention {'fwd+bwd' if args.train else 'fwd'} ({gpu_slug()})")
    cols = ["spec", "avo kernel"] + [f"{n} TFLOP/s" for n in names] + ["avo/sdpa-default", "avo/flex", "avo/inductor",
                                                                       "avo max|err| vs sdpa"]
    print()
    print_table(rows, [c for c in cols if any(r.get(c) is not None for r in rows)])


if __name__ == "__main__":
    main()
