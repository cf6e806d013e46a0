"""Small built-in transformers for the demo, the benchmarks and the end-to-end tests.

``LlamaStyle`` writes attention by hand the way many real models do (repeat_interleave for GQA, a triu mask
applied with masked_fill, fp32 softmax): Inductor leaves it unfused (1.8-3.3x slower than SDPA on an H100,
shared/ANCHORS.md). ``GPT2Style`` uses a causal tril buffer and dropout. Both can use SDPA instead
(``attn="sdpa"``) for side-by-side runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 2048
    n_layers: int = 4
    n_heads: int = 16
    n_kv_heads: int = 4
    max_seq_len: int = 8192
    vocab: int = 32000
    attn: str = "handwritten"  # handwritten | sdpa
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim} / heads {self.n_heads} / kv heads {self.n_kv_heads} do not divide")
        if self.attn not in ("handwritten", "sdpa"):
            raise ValueError(f"attn must be 'handwritten' or 'sdpa'; got {self.attn!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def _rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding on (B, H, N, D)."""
    n, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.dim, cfg.head_dim
        self.wq = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, (b, n, _) = self.cfg, x.shape
        q = _rope(self.wq(x).view(b, n, cfg.n_heads, cfg.head_dim).transpose(1, 2))
        k = _rope(self.wk(x).view(b, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2))
        v = self.wv(x).view(b, n, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.attn == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.head_dim)
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
            scores = scores.masked_fill(mask, float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = probs @ v
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))


class GPT2Attention(nn.Module):
    bias: torch.Tensor  # causal keep-mask buffer (1, 1, max_seq_len, max_seq_len), registered in __init__

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.c_attn = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.c_proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        tril = torch.tril(torch.ones(cfg.max_seq_len, cfg.max_seq_len, dtype=torch.bool))
        self.register_buffer("bias", tril.view(1, 1, cfg.max_seq_len, cfg.max_seq_len), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, (b, n, c) = self.cfg, x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (t.view(b, n, cfg.n_heads, cfg.head_dim).transpose(1, 2) for t in (q, k, v))
        if cfg.attn == "sdpa":
            p = cfg.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(cfg.head_dim))
            att = att.masked_fill(~self.bias[:, :, :n, :n], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            out = att @ v
        return self.c_proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.dim), nn.RMSNorm(cfg.dim)
        self.attn = attention(cfg)
        hidden = 4 * cfg.dim
        self.up, self.gate, self.down = (nn.Linear(cfg.dim, hidden, bias=False), nn.Linear(cfg.dim, hidden, bias=False),
                                         nn.Linear(hidden, cfg.dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    """A stack of blocks over embeddings (B, N, dim) -> (B, N, dim); no vocab head, so timing is attention-heavy."""

    def __init__(self, cfg: ModelConfig, attention: type[nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def llama_style(cfg: ModelConfig | None = None) -> Decoder:
    """4-layer Llama-style decoder (dim 2048, 16 heads, 4 kv heads) with hand-written causal GQA attention."""
    return Decoder(cfg or ModelConfig(), LlamaAttention)


def gpt2_style(cfg: ModelConfig | None = None) -> Decoder:
    """GPT-2-style decoder (MHA, tril buffer mask, attention dropout)."""
    return Decoder(cfg or ModelConfig(dim=768, n_heads=12, n_kv_heads=12, n_layers=4, max_seq_len=4096), GPT2Attention)


def tiny_llama(attn: str = "handwritten") -> Decoder:
    """A model small enough for the CPU Triton interpreter: 2 layers, dim 64, 4 heads, 2 kv heads (hd 16)."""
    return llama_style(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256, attn=attn))


def tiny_llama_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """For ``python -m avo_inductor.search run --model avo_inductor.example_models:tiny_llama_factory``."""
    torch.manual_seed(0)
    return tiny_llama().eval(), (torch.randn(1, 32, 64),)
