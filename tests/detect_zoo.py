"""Tiny attention modules for the detection tests: one configurable hand-written module, so every graph shape
(scale placement, mask style, GQA style, fp32 softmax, matmul spelling, dropout) is a config, not a copy;
plus a compile harness whose backend detects, rewrites and hands the rewritten graph back to run.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from avo_inductor.detect import AttentionMatch, SkippedSite, find_attention_sites, rewrite_to_sdpa

MAX_LEN = 64


@dataclass(frozen=True)
class Cfg:
    """One hand-written attention variant. ``mask``: none | triu_buffer | tril_buffer | ingraph_tril | arange |
    additive_inf | window | bias | padding | decode_causal. ``gqa``: none | repeat_interleave | expand.
    ``scale_on``: scores_mul | scores_div | q | k | qk | after_mask. ``softmax``: plain | float | dtype | method.
    ``matmul``: matmul | operator | bmm | baddbmm."""

    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 8
    mask: str = "none"
    gqa: str = "none"
    scale_on: str = "scores_mul"
    softmax: str = "plain"
    matmul: str = "operator"
    dropout: float = 0.0
    window: int = 4
    custom_scale: float | None = None


class HandAttention(nn.Module):
    """softmax(q k^T * scale + mask) v over (B, N, C) input, written the way ``cfg`` says."""

    def __init__(self, cfg: Cfg) -> None:
        super().__init__()
        self.cfg = cfg
        c, kvc = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(c, c)
        self.kv_proj = nn.Linear(c, 2 * kvc)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("triu", torch.triu(torch.ones(MAX_LEN, MAX_LEN, dtype=torch.bool), diagonal=1))
        self.register_buffer("tril", torch.tril(torch.ones(MAX_LEN, MAX_LEN)).view(1, 1, MAX_LEN, MAX_LEN))
        self.rel_bias = nn.Parameter(torch.randn(cfg.heads, 1, 1) * 0.5)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, kv: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        b, n, _ = x.shape
        src = x if kv is None else kv
        nk = src.shape[1]
        q = self.q_proj(x).view(b, n, cfg.heads, cfg.head_dim).transpose(1, 2)
        k, v = self.kv_proj(src).chunk(2, dim=-1)
        k = k.view(b, nk, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = v.view(b, nk, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        rep = cfg.heads // cfg.kv_heads
        if cfg.gqa == "repeat_interleave":
            k, v = k.repeat_interleave(rep, dim=1), torch.repeat_interleave(v, rep, dim=1)
        elif cfg.gqa == "expand":
            k, v = (t[:, :, None, :, :].expand(b, cfg.kv_heads, rep, nk, cfg.head_dim)
                    .reshape(b, cfg.heads, nk, cfg.head_dim) for t in (k, v))
        if cfg.matmul in ("bmm", "baddbmm"):  # fairseq style: everything (B*H, N, D)
            q, k, v = (t.reshape(-1, t.shape[2], cfg.head_dim) for t in (q, k, v))
        scale = cfg.custom_scale or 1.0 / math.sqrt(cfg.head_dim)
        kt = k.transpose(-2, -1)
        if cfg.scale_on == "q":
            q = q * scale
        elif cfg.scale_on == "k":
            kt = kt * scale
        elif cfg.scale_on == "qk":
            q, kt = q * math.sqrt(scale), kt * math.sqrt(scale)
        s = self._qk(q, kt)
        if cfg.scale_on == "scores_mul":
            s = s * scale
        elif cfg.scale_on == "scores_div":
            s = s / (1.0 / scale)
        s = self._mask(s, n, nk, pad)
        if cfg.scale_on == "after_mask":  # a bias added before the scale gets scaled too
            s = s * scale
        if cfg.softmax == "float":
            p = F.softmax(s.float(), dim=-1).to(q.dtype)
        elif cfg.softmax == "dtype":
            p = F.softmax(s, dim=-1, dtype=torch.float32).type_as(q)
        elif cfg.softmax == "method":
            p = s.softmax(-1)
        else:
            p = torch.softmax(s, dim=-1)
        p = self.drop(p)
        out = self._pv(p, v).view(b, cfg.heads, n, cfg.head_dim)
        return out.transpose(1, 2).reshape(b, n, -1)

    def _qk(self, q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
        if self.cfg.matmul == "matmul":
            return torch.matmul(q, kt)
        if self.cfg.matmul == "bmm":
            return torch.bmm(q, kt)
        if self.cfg.matmul == "baddbmm":
            empty = torch.empty(q.shape[0], q.shape[1], kt.shape[-1], dtype=q.dtype, device=q.device)
            return torch.baddbmm(empty, q, kt, beta=0.0, alpha=1.0)
        return q @ kt

    def _pv(self, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.cfg.matmul in ("bmm", "baddbmm"):
            return torch.bmm(p, v)
        return torch.matmul(p, v) if self.cfg.matmul == "matmul" else p @ v

    def _mask(self, s: torch.Tensor, n: int, nk: int, pad: torch.Tensor | None) -> torch.Tensor:
        kind = self.cfg.mask
        if kind == "triu_buffer":
            return s.masked_fill(self.triu[:n, :nk], float("-inf"))
        if kind == "tril_buffer":
            return s.masked_fill(self.tril[:, :, :n, :nk] == 0, float("-inf"))
        if kind == "ingraph_tril":
            keep = torch.tril(torch.ones(n, nk, device=s.device))
            return s.masked_fill(keep == 0, torch.finfo(s.dtype).min)
        if kind == "decode_causal":  # bottom-right aligned: n new queries after nk - n cached keys
            keep = torch.ones(n, nk, dtype=torch.bool, device=s.device).tril(diagonal=nk - n)
            return s.masked_fill(~keep, float("-inf"))
        if kind in ("arange", "window"):
            i = torch.arange(n, device=s.device)[:, None]
            j = torch.arange(nk, device=s.device)[None, :]
            keep = j <= i
            if kind == "window":
                keep = keep & (j > i - self.cfg.window)
            return torch.where(keep, s, float("-inf"))
        if kind == "additive_inf":
            return s + torch.triu(torch.full((n, nk), float("-inf"), device=s.device), diagonal=1)
        if kind == "bias":
            return s + self.rel_bias
        if kind == "padding":
            assert pad is not None
            return s.masked_fill(~pad[:, None, None, :], torch.finfo(s.dtype).min)
        return s


class SdpaAttention(nn.Module):
    """F.scaled_dot_product_attention called the way ``style`` says: positional | bool_mask | float_mask |
    causal | scale | gqa_flag | gqa_repeat | ingraph_causal_mask | padding | dropout."""

    def __init__(self, style: str, heads: int = 4, kv_heads: int = 4, head_dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.style, self.heads, self.kv_heads, self.head_dim, self.dropout = style, heads, kv_heads, head_dim, dropout
        self.q_proj = nn.Linear(heads * head_dim, heads * head_dim)
        self.kv_proj = nn.Linear(heads * head_dim, 2 * kv_heads * head_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        src = x if kv is None else kv
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(src).view(b, src.shape[1], 2 * self.kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        style, p = self.style, (self.dropout if self.training else 0.0)
        if style == "positional":
            out = F.scaled_dot_product_attention(q, k, v, mask, p, False)
        elif style in ("bool_mask", "float_mask", "padding"):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif style == "causal":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif style == "scale":
            out = F.scaled_dot_product_attention(q, k, v, scale=0.1)
        elif style == "gqa_flag":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif style == "gqa_repeat":
            rep = self.heads // self.kv_heads
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        elif style == "ingraph_causal_mask":
            keep = torch.ones(n, src.shape[1], dtype=torch.bool, device=x.device).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            raise ValueError(style)
        return out.transpose(1, 2).reshape(b, n, -1)


class AlibiAttention(nn.Module):
    """Causal or bidirectional attention with a bias built from per-head slopes, written the way ``style`` says:
    kpos (slopes x key position, causal) | relative (slopes x (k - q), causal) | symmetric (-slopes x |q - k|,
    no causal mask) | kpos_full (slopes x key position without a causal mask: not ALiBi) | noise (kpos + a fixed
    random buffer: not ALiBi) | learned (kpos with slopes as a parameter) | square (slopes x k^2: not ALiBi)."""

    def __init__(self, style: str, heads: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.style, self.heads, self.head_dim = style, heads, head_dim
        self.qkv = nn.Linear(heads * head_dim, 3 * heads * head_dim)
        self.register_buffer("noise", torch.randn(heads, MAX_LEN, MAX_LEN) * 1e-2)
        self.slopes = nn.Parameter(torch.rand(heads)) if style == "learned" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        h = self.heads
        slopes = self.slopes if self.slopes is not None else \
            torch.pow(2.0, -8.0 * torch.arange(1, h + 1, device=x.device, dtype=torch.float32) / h)
        i = torch.arange(n, device=x.device)[:, None]
        j = torch.arange(n, device=x.device)[None, :]
        distance = {"relative": j - i, "symmetric": -(i - j).abs(), "square": j * j}.get(self.style, j.expand(n, n))
        bias = slopes[:, None, None] * distance
        if self.style == "noise":
            bias = bias + self.noise[:, :n, :n]
        s = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + bias
        if self.style not in ("symmetric", "kpos_full"):
            s = s.masked_fill(j > i, float("-inf"))
        out = torch.softmax(s, dim=-1) @ v
        return out.transpose(1, 2).reshape(b, n, -1)


@dataclass
class Compiled:
    """What the harness saw: one list of sites per backend call, and the rewritten graphs."""

    sites: list[list[AttentionMatch | SkippedSite]] = field(default_factory=list)
    graphs: list[fx.GraphModule] = field(default_factory=list)

    @property
    def matches(self) -> list[AttentionMatch]:
        return [s for call in self.sites for s in call if isinstance(s, AttentionMatch)]

    @property
    def skipped(self) -> list[SkippedSite]:
        return [s for call in self.sites for s in call if isinstance(s, SkippedSite)]


Rewrite = Callable[[fx.GraphModule, AttentionMatch], Any]


def compile_with(model: nn.Module, *, dynamic: bool = False, rewrite: Rewrite | None = rewrite_to_sdpa,
                 finalize: Callable[[fx.GraphModule], None] | None = None) -> tuple[Callable[..., Any], Compiled]:
    """torch.compile ``model`` with a backend that finds sites, rewrites every match and runs the result eagerly."""
    seen = Compiled()

    def backend(gm: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        sites = find_attention_sites(gm)
        seen.sites.append(sites)
        if rewrite is not None:
            for site in sites:
                if isinstance(site, AttentionMatch):
                    rewrite(gm, site)
        if finalize is not None:
            finalize(gm)
        seen.graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=False), seen


def avo_rewrite(gm: fx.GraphModule, match: AttentionMatch) -> Any:
    """Rewrite a site to the avo op running the untuned baseline kernel of its spec (the interpreter on CPU), the
    kernel a seeded store record would serve, without Inductor (whose CPU compile costs tens of seconds a model)."""
    from avo_inductor.detect import rewrite_to_avo
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.op import register_kernel

    return rewrite_to_avo(gm, match, register_kernel(baseline_record(match.spec)))


def count_calls(gm: fx.GraphModule, *targets: Any) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


def no_softmax_left(gm: fx.GraphModule) -> bool:
    return not any(n.target in (torch.softmax, F.softmax) or n.target == "softmax" for n in gm.graph.nodes)
