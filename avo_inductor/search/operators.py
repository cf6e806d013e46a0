"""Structured variation: mutate / cross over KernelGenome knobs inside the space a spec allows.

Everything here is a pure, seeded function of its inputs (no I/O, no global RNG), so a search is
reproducible from its seed and a resumed run proposes what the killed one would have proposed.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from ..kernels.genome import KNOBS, KernelGenome, Knob
from ..kernels.render import fused_bwd_problem, template_digest
from ..spec import AttentionSpec, HardwareKey, MaskKind, next_power_of_two, stable_hash
from .types import Candidate, EvalResult


def _prune(rule: str | None, values: tuple[Any, ...], spec: AttentionSpec,
           hardware: HardwareKey | None) -> tuple[Any, ...] | None:
    """The values of a knob under pruning rule ``rule`` (artifact.PRUNE_RULES) for ``spec``; None drops the knob
    (frozen at its default). Why each cut: a tile larger than next_pow2(length) only computes masked-out padding
    (the forward's rows are q_len * GQA group when pack_gqa can pack them); kv_splits is the decode (q_len <= 16)
    split-K and must leave every split at least one key tile, and split_combine acts on decode's splits only;
    causal-only knobs are no-ops without a causal mask or window; pack_gqa needs q heads sharing a kv head; the
    alibi knobs change ALiBi kernels only; TMA and warp specialization need Hopper (sm90+) and do not exist in the
    CPU interpreter; the fused Gluon backward runs on sm_90 for the specs render.fused_bwd_problem admits."""
    gqa = spec.q_heads != spec.kv_heads
    if rule == "q_tile":
        limit = next_power_of_two(spec.q_len * spec.gqa_group if gqa else spec.q_len)
        return tuple(v for v in values if v <= limit)
    if rule == "q_tile_bwd":
        return tuple(v for v in values if v <= next_power_of_two(spec.q_len))
    if rule == "kv_tile":
        return tuple(v for v in values if v <= next_power_of_two(spec.kv_len))
    if rule == "decode_splits":
        return tuple(v for v in values if v <= max(1, spec.kv_len // 16)) if spec.is_decode else (1,)
    if rule == "decode":  # where kv_splits can exceed 1 (the decode_splits rule)
        return values if spec.is_decode and spec.kv_len // 16 >= 2 else (False,)
    if rule == "causal":
        return values if spec.causal or spec.window else None
    if rule == "alibi":
        return values if spec.mask is MaskKind.ALIBI else None
    if rule == "gqa":
        return values if gqa else (False,)
    if rule == "hopper":
        hopper = hardware is not None and hardware.vendor == "nvidia" and hardware.capability >= (9, 0)
        return values if hopper else (False,)
    if rule == "fused_bwd":  # flash_ws90's Gluon backward: sm_90 exactly (wgmma), the specs it renders
        sm90 = hardware is not None and hardware.vendor == "nvidia" and hardware.capability == (9, 0)
        return values if sm90 and fused_bwd_problem(spec) is None else (False,)
    if rule is None:
        return values
    raise ValueError(f"unknown pruning rule {rule!r}")


def spec_space(spec: AttentionSpec, hardware: HardwareKey | None = None, template: str = "flash_v1",
               knobs: tuple[Knob, ...] = KNOBS) -> dict[str, tuple[Any, ...]]:
    """The knob table's search space pruned to the knobs and values that mean something for ``spec``.

    Per knob (artifact.KNOBS): its pruning rule (:func:`_prune`); backward knobs only when the spec needs grad. A
    knob left with a single value is frozen (not mutated). ``template`` flash_ws90 keeps the knobs that template
    renders (``ws90`` role; those acting only through the backward when the spec trains) narrowed to their
    ``ws90_values`` (shared-memory fit is left to its renderability check).
    """
    ws90 = template == "flash_ws90"
    space: dict[str, tuple[Any, ...]] = {}
    for knob in knobs:
        if knob.direction == "bwd" and not spec.needs_grad:
            continue
        if ws90 and (knob.ws90 in ("ignored", "refused") or (knob.ws90 == "bwd" and not spec.needs_grad)):
            continue
        allowed = _prune(knob.prune, knob.values, spec, hardware)
        if allowed is None:
            continue
        allowed = allowed or knob.values[:1]
        if ws90 and knob.ws90_values is not None:
            allowed = tuple(v for v in knob.ws90_values if v in allowed) or knob.ws90_values
        space[knob.name] = allowed
    return space


def clamp_to_spec(genome: KernelGenome, spec: AttentionSpec, hardware: HardwareKey | None = None) -> KernelGenome:
    """Project ``genome`` into ``spec_space``: each out-of-space value becomes the nearest allowed one."""
    space = spec_space(spec, hardware, genome.template)
    changes: dict[str, Any] = {}
    for knob, allowed in space.items():
        value = getattr(genome, knob)
        if value in allowed:
            continue
        if isinstance(value, bool) or not all(isinstance(v, (int, float)) for v in allowed):
            changes[knob] = allowed[0]
        else:
            changes[knob] = min(allowed, key=lambda v: (abs(v - value), v))
    return genome.replace(**changes) if changes else genome


def in_space(genome: KernelGenome, spec: AttentionSpec, hardware: HardwareKey | None = None) -> bool:
    """True when every searched knob of ``genome`` holds a value ``spec_space`` allows."""
    return all(getattr(genome, k) in allowed for k, allowed in spec_space(spec, hardware, genome.template).items())


def genome_hash(genome: KernelGenome) -> str:
    """A genome's search identity: its knobs and the source of the template that renders them (see
    ``kernels.render.template_digest``), so the same knobs on a changed template are a new candidate."""
    return stable_hash({"genome": genome.to_dict(), "template": template_digest(genome.template)})[:16]


def content_hash(candidate: Candidate) -> str:
    """Dedup key of a candidate: its source when it has one (the source wins at render time), else its genome."""
    if candidate.source is not None:
        return stable_hash({"source": candidate.source, "launch": candidate.launch,
                            "entry": candidate.entry_point, "bwd": candidate.bwd_entry_point})[:16]
    if candidate.genome is None:
        raise ValueError(f"candidate {candidate.id} has neither genome nor source")
    return genome_hash(candidate.genome)


def genome_diff(before: KernelGenome, after: KernelGenome) -> str:
    """Human-readable change list, e.g. ``block_n 64→128, exp2 False→True``; empty when equal."""
    parts = []
    for f in dataclasses.fields(KernelGenome):
        a, b = getattr(before, f.name), getattr(after, f.name)
        if a != b:
            parts.append(f"{f.name} {a}→{b}")
    return ", ".join(parts)


def mutate(genome: KernelGenome, spec: AttentionSpec, rng: random.Random, n_knobs: int = 1,
           hardware: HardwareKey | None = None) -> KernelGenome:
    """Change ``n_knobs`` distinct mutable knobs to another allowed value.

    Numeric knobs step to a neighbouring value with probability 0.7 (local search keeps what works),
    otherwise jump anywhere in the allowed range. The result is always in ``spec_space``.
    """
    base = clamp_to_spec(genome, spec, hardware)
    space = spec_space(spec, hardware, base.template)
    mutable = sorted(k for k, v in space.items() if len(v) > 1)
    if not mutable:
        return base
    changes: dict[str, Any] = {}
    for knob in rng.sample(mutable, min(max(1, n_knobs), len(mutable))):
        allowed = space[knob]
        current = getattr(base, knob)
        idx = allowed.index(current)
        if len(allowed) > 2 and rng.random() < 0.7 and not isinstance(current, bool):
            steps = [i for i in (idx - 1, idx + 1) if 0 <= i < len(allowed)]
            changes[knob] = allowed[rng.choice(steps)]
        else:
            changes[knob] = rng.choice([v for v in allowed if v != current])
    return base.replace(**changes)


def crossover(a: KernelGenome, b: KernelGenome, spec: AttentionSpec, rng: random.Random,
              hardware: HardwareKey | None = None) -> KernelGenome:
    """Uniform crossover: each searched knob taken from ``a`` or ``b`` with probability 1/2."""
    a, b = clamp_to_spec(a, spec, hardware), clamp_to_spec(b, spec, hardware)
    if a.template != b.template:  # knobs mean different kernels in different templates: keep a's family
        return a
    picks = {k: getattr(b if rng.random() < 0.5 else a, k) for k in spec_space(spec, hardware, a.template)}
    return a.replace(**picks)


def renderable(genome: KernelGenome, spec: AttentionSpec) -> bool:
    """True when the template can render ``genome`` for ``spec`` (e.g. not a head dim above 256).

    Asks ``kernels.render.check_renderable``; if that module is unavailable every genome counts as renderable
    and the evaluator's compile stage reports the problem instead."""
    try:
        from ..kernels.render import check_renderable
    except ImportError:
        return True
    try:
        check_renderable(genome, spec)
    except ValueError:
        return False
    return True


def candidate_id(spec: AttentionSpec, digest: str) -> str:
    """Stable id of a (spec, content) pair: the same kernel for the same spec always gets the same id."""
    return f"c{stable_hash(spec.cache_key())[:6]}-{digest[:12]}"


class StructuredOperator:
    """VariationOperator over genome knobs: mutation (1 to ``max_knobs`` knobs) or uniform crossover.

    Parents without a genome (free-form agent sources) are skipped; children repeating a parent or each
    other, or rejected by ``valid`` (default: the template can render them), are dropped, so ``propose`` may
    return fewer than ``n`` when the space is nearly exhausted.
    """

    name = "structured"

    def __init__(self, crossover_rate: float = 0.3, max_knobs: int = 2, hardware: HardwareKey | None = None,
                 attempts_per_child: int = 8,
                 valid: Callable[[KernelGenome, AttentionSpec], bool] | None = renderable) -> None:
        if not 0.0 <= crossover_rate <= 1.0:
            raise ValueError(f"crossover_rate must be in [0, 1]; got {crossover_rate}")
        if max_knobs < 1:
            raise ValueError(f"max_knobs must be >= 1; got {max_knobs}")
        self.crossover_rate = crossover_rate
        self.max_knobs = max_knobs
        self.hardware = hardware
        self.attempts_per_child = attempts_per_child
        self.valid = valid

    def propose(self, parents: Sequence[tuple[Candidate, EvalResult | None]], n: int, seed: int) -> list[Candidate]:
        rng = random.Random(seed)
        # Selection samples with replacement: the same parent may come several times; keep one of each.
        usable = list({p.id: p for p, _ in parents if p.genome is not None}.values())
        if not usable or n <= 0:
            return []
        seen = {genome_hash(p.genome) for p in usable if p.genome is not None}
        children: list[Candidate] = []
        for _ in range(n * self.attempts_per_child):
            if len(children) >= n:
                break
            first = rng.choice(usable)
            assert first.genome is not None
            if len(usable) > 1 and rng.random() < self.crossover_rate:
                second = rng.choice([p for p in usable if p.id != first.id])
                assert second.genome is not None
                child = crossover(first.genome, second.genome, first.spec, rng, self.hardware)
                if rng.random() < 0.5:  # crossover of near-identical parents rarely moves; nudge one knob
                    child = mutate(child, first.spec, rng, 1, self.hardware)
                parent_ids: tuple[str, ...] = (first.id, second.id)
                diff = f"crossover({first.id}, {second.id}): {genome_diff(first.genome, child) or 'no change'}"
            else:
                child = mutate(first.genome, first.spec, rng, rng.randint(1, self.max_knobs), self.hardware)
                parent_ids = (first.id,)
                diff = genome_diff(first.genome, child)
            digest = genome_hash(child)
            if digest in seen or (self.valid is not None and not self.valid(child, first.spec)):
                continue
            seen.add(digest)
            children.append(Candidate(id=candidate_id(first.spec, digest), spec=first.spec, genome=child,
                                      parent_ids=parent_ids, operator=self.name, island=first.island,
                                      generation=first.generation + 1, diff=diff))
        return children
