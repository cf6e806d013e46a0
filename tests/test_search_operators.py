"""Structured mutation and crossover: always valid for the spec, seeded, with readable diffs."""
from __future__ import annotations

import random

import pytest

from avo_inductor.kernels.genome import GENOME_SPACE, KernelGenome
from avo_inductor.search.operators import (StructuredOperator, clamp_to_spec, crossover, genome_diff, in_space,
                                           mutate, spec_space)
from avo_inductor.search.types import Candidate
from avo_inductor.spec import AttentionSpec, HardwareKey

PREFILL = AttentionSpec(2, 8, 8, 100, 100, 64, causal=True)
DECODE = AttentionSpec(4, 32, 8, 1, 4096, 128)
TRAIN = AttentionSpec(1, 4, 4, 48, 48, 32, needs_grad=True)
H100 = HardwareKey("nvidia", "H100", (9, 0), 132)


@pytest.mark.parametrize("spec", [PREFILL, DECODE, TRAIN], ids=["prefill", "decode", "train"])
def test_mutation_stays_valid_over_many_seeds(spec: AttentionSpec) -> None:
    genome = KernelGenome()
    space = spec_space(spec)
    for seed in range(300):
        rng = random.Random(seed)
        child = mutate(genome, spec, rng, n_knobs=rng.randint(1, 3))
        assert in_space(child, spec), (seed, child)
        assert child.block_m <= 128 and child.block_n <= 128  # next_pow2(100) = 128
        if not spec.is_decode:
            assert child.kv_splits == 1
        if not spec.needs_grad:
            assert (child.bwd_block_m, child.bwd_block_n) == (genome.bwd_block_m, genome.bwd_block_n)
        assert not child.use_tma  # no hardware given: TMA off
        genome = child
    assert set(space["block_m"]) <= set(GENOME_SPACE["block_m"])


def test_spec_space_filters() -> None:
    assert spec_space(DECODE)["kv_splits"] == GENOME_SPACE["kv_splits"]
    assert spec_space(PREFILL)["kv_splits"] == (1,)
    assert spec_space(DECODE)["split_combine"] == (False, True)  # decode's splits only
    assert spec_space(PREFILL)["split_combine"] == (False,)
    assert "split_combine" not in spec_space(DECODE, template="flash_ws90")
    assert spec_space(AttentionSpec(1, 2, 2, 20, 20, 16))["block_m"] == (16, 32)
    assert "causal_split" not in spec_space(AttentionSpec(1, 2, 2, 64, 64, 16))
    assert spec_space(PREFILL, H100)["use_tma"] == (False, True)
    assert spec_space(PREFILL, HardwareKey("cpu", "triton-interpreter", (0, 0), 0))["use_tma"] == (False,)
    assert "bwd_block_m" in spec_space(TRAIN) and "bwd_block_m" not in spec_space(PREFILL)


def test_pack_gqa_only_for_gqa_specs() -> None:
    assert spec_space(DECODE)["pack_gqa"] == (False, True)  # 32 q heads on 8 kv heads
    assert spec_space(AttentionSpec(1, 8, 1, 100, 100, 64))["pack_gqa"] == (False, True)  # MQA prefill
    for mha in (PREFILL, TRAIN):
        assert spec_space(mha)["pack_gqa"] == (False,)
        assert not clamp_to_spec(KernelGenome(pack_gqa=True), mha).pack_gqa
        assert not in_space(KernelGenome(pack_gqa=True), mha)
        assert all(not mutate(KernelGenome(), mha, random.Random(s), 3).pack_gqa for s in range(100))
    assert clamp_to_spec(KernelGenome(pack_gqa=True), DECODE).pack_gqa
    assert any(mutate(KernelGenome(), DECODE, random.Random(s), 2).pack_gqa for s in range(100))
    # packed rows are q_len * group: tiles up to next_pow2(16 * 4) = 64 for the forward, not for the backward
    spec = AttentionSpec(1, 8, 2, 16, 1024, 64, needs_grad=True)
    assert spec_space(spec)["block_m"] == (16, 32, 64) and spec_space(spec)["bwd_block_m"] == (16,)
    assert clamp_to_spec(KernelGenome(block_m=256, bwd_block_m=64), spec).block_m == 64
    assert spec_space(AttentionSpec(1, 8, 8, 16, 1024, 64))["block_m"] == (16,)


def test_clamp_and_diff() -> None:
    g = KernelGenome(block_m=256, block_n=128, kv_splits=8)
    c = clamp_to_spec(g, AttentionSpec(1, 2, 2, 40, 40, 16))
    assert (c.block_m, c.block_n, c.kv_splits) == (64, 64, 1)
    assert genome_diff(g, c) == "block_m 256→64, block_n 128→64, kv_splits 8→1"
    assert genome_diff(g, g) == ""


def test_mutation_and_crossover_are_seeded() -> None:
    a, b = KernelGenome(), KernelGenome(block_m=32, num_warps=8, exp2=False)
    assert mutate(a, PREFILL, random.Random(7), 2) == mutate(a, PREFILL, random.Random(7), 2)
    assert crossover(a, b, PREFILL, random.Random(3)) == crossover(a, b, PREFILL, random.Random(3))
    kids = {crossover(a, b, PREFILL, random.Random(s)) for s in range(50)}
    for kid in kids:
        for knob in ("block_m", "num_warps", "exp2"):
            assert getattr(kid, knob) in (getattr(a, knob), getattr(b, knob))
    assert len(kids) > 2


def test_structured_operator_dedups_and_links_parents() -> None:
    op = StructuredOperator(valid=None)
    p1 = Candidate("p1", PREFILL, genome=KernelGenome())
    p2 = Candidate("p2", PREFILL, genome=KernelGenome(block_n=32, num_warps=8))
    kids = op.propose([(p1, None), (p2, None)], 20, seed=11)
    assert kids == op.propose([(p1, None), (p2, None)], 20, seed=11)
    assert len(kids) == 20 and len({k.id for k in kids}) == 20
    assert all(k.genome not in (p1.genome, p2.genome) for k in kids)
    assert all(set(k.parent_ids) <= {"p1", "p2"} and k.operator == "structured" and k.diff for k in kids)
    assert any(len(k.parent_ids) == 2 for k in kids)


def test_operator_respects_validity_filter() -> None:
    op = StructuredOperator(valid=lambda g, s: g.num_warps != 8)
    kids = op.propose([(Candidate("p", PREFILL, genome=KernelGenome()), None)], 30, seed=1)
    assert kids and all(k.genome is not None and k.genome.num_warps != 8 for k in kids)


def test_genome_identity_includes_the_template_source(monkeypatch):
    """A database resumed after the template changed must re-evaluate its genomes: the same knobs rendered by a
    different template source are a different candidate."""
    from avo_inductor.kernels import render
    from avo_inductor.kernels.genome import KernelGenome
    from avo_inductor.search.operators import genome_hash

    genome = KernelGenome()
    before = genome_hash(genome)
    assert genome_hash(KernelGenome()) == before  # stable
    real = render._template_text
    monkeypatch.setattr(render, "_template_text", lambda name: real(name) + "\n# edited\n")
    render.template_digest.cache_clear()
    try:
        assert genome_hash(genome) != before
    finally:
        monkeypatch.setattr(render, "_template_text", real)
        render.template_digest.cache_clear()
    assert genome_hash(genome) == before
