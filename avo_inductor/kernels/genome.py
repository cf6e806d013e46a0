"""KernelGenome: every knob that distinguishes one attention kernel variant from another.

The structured search mutates these fields; templates render Triton source from them. Validation lives in
``__post_init__`` so an invalid genome can never reach the renderer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_POW2_BLOCKS = (16, 32, 64, 128, 256)

# Search space: knob name -> allowed values (plain data, pruned per spec by the template's filter).
GENOME_SPACE: dict[str, tuple[Any, ...]] = {
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3, 4, 5),
    "exp2": (False, True),
    "causal_split": (False, True),
    "even_fast_path": (False, True),
    "persistent": (False, True),
    "use_tma": (False, True),
    "warp_specialize": (False, True),
    "lazy_rescale": (False, True),
    "kv_splits": (1, 2, 4, 8, 16, 32, 64),
    "pack_gqa": (False, True),
    "heavy_first": (False, True),
    "overlap_qk": (False, True),
    "alibi_mma": (False, True),
    "alibi_bound": (False, True),
    "bwd_block_m": (16, 32, 64, 128),
    "bwd_block_n": (16, 32, 64, 128),
    "bwd_num_warps": (2, 4, 8),
    "bwd_num_stages": (1, 2, 3, 4),
    "bwd_transposed": (False, True),
    "bwd_dq_swap": (False, True),
    "bwd_dq_atomic": (False, True),
}


@dataclass(frozen=True)
class KernelGenome:
    """A kernel variant.

    block_m/block_n: query/key tile sizes. num_warps/num_stages: launch config (stages = software pipelining).
    exp2: softmax in base 2 with log2(e) folded into the scale. causal_split: causal loop split into
    unmasked full blocks + masked diagonal blocks. even_fast_path: drop boundary masks when lengths divide the
    tiles. persistent: one program per SM looping over tiles. use_tma: the forward reads K/V tiles through
    device-side tensor descriptors (Hopper's TMA copy engine; the launcher makes K/V rows 16-byte aligned).
    warp_specialize: Triton's automatic warp specialization of the key loop (producer warps load K/V while
    consumer warps compute; Hopper+, where the compiler supports it for the loop body).
    lazy_rescale: rescale the accumulator only when the running max grows by more than a threshold.
    kv_splits: split the key sequence across programs (decode, q_len <= 16), reduced by a second kernel.
    pack_gqa: forward only (GQA/MQA): the GROUP q heads sharing a kv head share one program, packed into the rows
    of its query tile (row r = query position r // GROUP of head-in-group r % GROUP), so each K/V block is read
    once per group instead of once per q head (FlashAttention-3's PackGQA; decode's win).
    heavy_first: causal forward and dq kernels visit each head's query tiles in reverse, so the tiles with the most
    key blocks start first and the last wave holds the light ones (FlashAttention-2's scheduling).
    overlap_qk: forward key blocks without masks issue the next block's QK^T matmul before this block's softmax
    (FlashAttention-3's intra-warpgroup overlap: the tensor cores work while the softmax runs), one extra QK^T per
    query tile (the last block's, recomputed and dropped).
    alibi_mma: ALiBi's per-key term on the key blocks wholly left (or wholly right) of a query tile's diagonal comes
    out of the tensor cores, as a second QK^T matmul of depth 16 (the slope against the key's offset in its block),
    and the rest of the bias is a per-row offset: those blocks cost the softmax no more than unmasked ones (the
    vector add it replaces is one more instruction per score, where head dim 64 is bound by instruction issue).
    alibi_bound: ALiBi query tiles skip the keys whose decay provably leaves them under 2^-(26 + log2 N_kv) of the
    row's softmax sum, from a Cauchy-Schwarz bound on the scores (the launcher passes each head's largest key
    norm): exact to fp32 rounding for any inputs, and steep slopes then read a band around the diagonal only.
    bwd_*: the same for the backward kernels; bwd_transposed: dK/dV from S^T = K Q^T (no register transposes,
    the Triton tutorial's form); bwd_dq_swap: the dq kernel takes the tiles swapped (large query tile);
    bwd_dq_atomic: dq accumulated by the dK/dV kernel with fp32 atomic adds (FlashAttention-2's form: 5 tile matmuls
    per block pair instead of 7, no dq kernel; the summation order, so dq's last bits, vary run to run).
    template: which template family renders the source.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    exp2: bool = True
    causal_split: bool = True
    even_fast_path: bool = True
    persistent: bool = False
    use_tma: bool = False
    warp_specialize: bool = False
    lazy_rescale: bool = False
    kv_splits: int = 1
    pack_gqa: bool = False
    heavy_first: bool = False
    overlap_qk: bool = False
    alibi_mma: bool = False
    alibi_bound: bool = False
    bwd_block_m: int = 32
    bwd_block_n: int = 64
    bwd_num_warps: int = 4
    bwd_num_stages: int = 2
    bwd_transposed: bool = False
    bwd_dq_swap: bool = False
    bwd_dq_atomic: bool = False
    template: str = "flash_v1"

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "bwd_block_m", "bwd_block_n"):
            value = getattr(self, name)
            if value not in _POW2_BLOCKS:
                raise ValueError(f"KernelGenome.{name} must be one of {_POW2_BLOCKS}; got {value!r}")
        for name, allowed in (("num_warps", (1, 2, 4, 8, 16)), ("bwd_num_warps", (1, 2, 4, 8, 16))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"KernelGenome.{name} must be one of {allowed}; got {getattr(self, name)!r}")
        for name in ("num_stages", "bwd_num_stages"):
            if not 1 <= getattr(self, name) <= 8:
                raise ValueError(f"KernelGenome.{name} must be in 1..8; got {getattr(self, name)!r}")
        if self.kv_splits < 1 or self.kv_splits & (self.kv_splits - 1):
            raise ValueError(f"KernelGenome.kv_splits must be a power of two >= 1; got {self.kv_splits!r}")
        if not self.template.isidentifier():
            raise ValueError(f"KernelGenome.template must be an identifier; got {self.template!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelGenome:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown KernelGenome field(s) {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> KernelGenome:
        return dataclasses.replace(self, **changes)
