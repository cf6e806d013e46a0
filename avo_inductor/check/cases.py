"""Which shapes and seeds a check runs: CheckCase records, and the inputs both sides rebuild from a seed.

Every small case has batch 2, two kv heads and the spec's whole GQA group (q_heads = 2 x group), ragged lengths
that are no multiple of any tile, and q_len != kv_len: a kernel right only for batch 0, kv head 0 or the first
rows fails here (ANTICHEAT.md). Inputs are drawn on the CPU from the case's seed and then moved to the device,
so the worker that runs the kernel and the parent that judges it build bit-identical inputs from a few integers
(no tensor crosses the process boundary towards the worker, nothing the worker says about its inputs is needed).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.reference import AttentionInputs, make_inputs
from ..spec import AttentionSpec, MaskKind

# (q_len, kv_len) pairs. CPU: the interpreter costs ~30-50 ms per tile step, so lengths stay under ~50.
_CPU_SMALL = ((1, 17), (17, 33), (33, 47))
_GPU_SMALL = ((1, 17), (113, 1000), (1000, 113), (129, 67))
_CPU_HELD_OUT = ((3, 50), (47, 29))
_GPU_HELD_OUT = ((3, 250), (200, 77), (7, 2047), (1, 4099))
_CPU_TARGET_MAX = 48
CHECK_KV_HEADS = 2
CHECK_BATCH = 2


@dataclass(frozen=True)
class CheckCase:
    """One checked shape. ``seeds``: inputs of run 1/2 and (three-run cases) of run 3. ``runs``: 3 for the full
    protocol, 1 for a big target (float64 reference cost). ``grads``: dq, dk, dv are checked too."""

    name: str
    spec: AttentionSpec
    seeds: tuple[int, int]
    runs: int = 3
    grads: bool = False

    def __post_init__(self) -> None:
        if self.runs not in (1, 3):
            raise ValueError(f"CheckCase.runs must be 1 or 3; got {self.runs!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict(), "seeds": list(self.seeds), "runs": self.runs,
                "grads": self.grads}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckCase:
        seeds = tuple(int(s) for s in data["seeds"])
        if len(seeds) != 2:
            raise ValueError(f"CheckCase needs two seeds; got {data['seeds']!r}")
        return cls(str(data["name"]), AttentionSpec.from_dict(data["spec"]), (seeds[0], seeds[1]),
                   int(data["runs"]), bool(data["grads"]))


def with_grads(spec: AttentionSpec) -> bool:
    """Whether checks of a record for ``spec`` include its backward: exactly the training specs. A record whose
    backward was not checked never serves a training site (cache/serving.py ``lookup_record``)."""
    return bool(spec.needs_grad)


def shaped(spec: AttentionSpec, q_len: int, kv_len: int, *, batch: int = CHECK_BATCH,
           kv_heads: int = CHECK_KV_HEADS) -> AttentionSpec:
    """``spec`` at new lengths with ``batch`` and ``kv_heads`` kv heads, keeping its GQA ratio, head dims, dtype,
    mask kind, causal and window."""
    return dataclasses.replace(spec, batch=batch, kv_heads=kv_heads, q_heads=kv_heads * spec.gqa_group, q_len=q_len,
                               kv_len=kv_len, dynamic=())


def _seeds(rng: random.Random) -> tuple[int, int]:
    return rng.getrandbits(62), rng.getrandbits(62)


def small_cases(spec: AttentionSpec, device_type: str, rng: random.Random, *, held_out: bool = False,
                quick: bool = False) -> list[CheckCase]:
    """The ragged small cases (``held_out``: the set seen only at promotion). Decode specs keep short queries."""
    cpu = device_type == "cpu"
    pairs: tuple[tuple[int, int], ...] = \
        (_CPU_HELD_OUT if cpu else _GPU_HELD_OUT) if held_out else (_CPU_SMALL if cpu else _GPU_SMALL)
    if spec.is_decode:
        pairs = tuple((min(q, spec.q_len), k) for q, k in pairs)
    if quick:
        pairs = pairs[:2]
    tag = "held_out" if held_out else "small"
    return [CheckCase(f"{tag} Nq{q} Nk{k}", shaped(spec, q, k), _seeds(rng), 3, with_grads(spec)) for q, k in pairs]


def target_case(spec: AttentionSpec, device_type: str, rng: random.Random) -> CheckCase:
    """The spec's own shape on GPU; on CPU scaled so the longer length is <= 48 at batch 2 and two kv heads,
    keeping the q/kv length ratio. One run: the small cases run the three-run protocol, and at the target the
    float64 reference (GPU) or the interpreter (CPU) is the costly part."""
    if device_type != "cpu":
        return CheckCase("target", dataclasses.replace(spec, dynamic=()), _seeds(rng), 1, with_grads(spec))
    factor = max(1.0, max(spec.q_len, spec.kv_len) / _CPU_TARGET_MAX)
    small = shaped(spec, max(1, round(spec.q_len / factor)), max(1, round(spec.kv_len / factor)))
    return CheckCase("target (scaled)", small, _seeds(rng), 1, with_grads(spec))


def verification_cases(spec: AttentionSpec, device_type: str, rng: random.Random, *,
                       own_lengths_only: bool = False) -> list[CheckCase]:
    """First-use / ``cache verify`` cases: the small ragged set plus the record's own lengths at batch 2 and two
    kv heads (capped on CPU). Not the whole target: first use runs inside the user's process, whose GPU memory
    belongs to the model (the search checked the full target before promotion).

    ``own_lengths_only``: the last case alone, for a class record checked at a site's shape on the very software
    it passed the ragged set on (backend/graph_pass.py ``ensure_verified``): that set's answer cannot have changed,
    and each of its length specialisations costs a Triton compile (~1.2 s on an H100 host, three of them:
    benchmarks/probes/first_use_cost.py)."""
    cases = [] if own_lengths_only else small_cases(spec, device_type, rng)
    q_len, kv_len = (spec.q_len, spec.kv_len) if device_type != "cpu" else \
        (min(spec.q_len, _CPU_TARGET_MAX), min(spec.kv_len, 2 * _CPU_TARGET_MAX))
    cases.append(CheckCase(f"own lengths Nq{q_len} Nk{kv_len}", shaped(spec, q_len, kv_len), _seeds(rng), 3,
                           with_grads(spec)))
    return cases


def case_inputs(spec: AttentionSpec, seed: int, device: torch.device | str) -> AttentionInputs:
    """The inputs of ``seed``, drawn on the CPU and moved to ``device`` (identical on every host). A padding mask
    over two or more batches keeps every key of its last row: random prefixes rarely reach the last keys, yet
    that is where split-K and span-skipping kernels go wrong."""
    x = make_inputs(spec, "cpu", seed=seed)
    if spec.mask is MaskKind.PADDING and spec.batch >= 2 and x.mask is not None:
        x.mask[-1] = True
    dev = torch.device(device)
    return AttentionInputs(x.q.to(dev), x.k.to(dev), x.v.to(dev), None if x.mask is None else x.mask.to(dev))


def case_grad_output(spec: AttentionSpec, seed: int, device: torch.device | str) -> torch.Tensor:
    """The output gradient ``do`` of a case's backward run, from the case's seed (CPU, then moved)."""
    g = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)
    shape = (spec.batch, spec.q_heads, spec.q_len, spec.value_dim)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(spec.torch_dtype).to(torch.device(device))
