"""avo_inductor.search.bench's built-in baselines (what the evaluator times candidates against), on CPU.

Every provider must compute the spec's attention (float64 reference, the dtype's tolerance): a baseline that is
wrong or slowed by a bad formulation makes the search report speedups that are not there (H100: SDPA given a
bf16-built ALiBi mask was off by 2.9; Flex with a dense (B, H, N, N) bias failed for ALiBi, so the "best
built-in" fell back to dense-mask SDPA and a 0.98x kernel was reported as 1.88x).
Compiled flex on CPU costs seconds per spec: shapes are tiny, lengths multiples of 32 (pytorch/pytorch#159247).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from avo_inductor.kernels.reference import additive_mask, attention_reference, make_inputs, tolerance
from avo_inductor.search import bench
from avo_inductor.spec import AttentionSpec, MaskKind

MASKED = {
    "alibi": AttentionSpec(2, 4, 2, 64, 64, 16, dtype="bfloat16", mask="alibi"),
    "padding": AttentionSpec(2, 4, 4, 64, 64, 16, dtype="bfloat16", mask="padding"),
    "bias": AttentionSpec(2, 4, 2, 64, 64, 16, dtype="bfloat16", mask="bias", causal=True),
    "window": AttentionSpec(2, 4, 4, 64, 64, 16, dtype="bfloat16", causal=True, window=16),
}


def _reference(spec: AttentionSpec, x) -> torch.Tensor:
    return attention_reference(x.q, x.k, x.v, scale=spec.effective_scale, causal=spec.causal, window=spec.window,
                               mask_kind=spec.mask.value, mask=x.mask)


def _assert_matches(out: torch.Tensor, spec: AttentionSpec, x) -> None:
    atol, rtol = tolerance(spec.torch_dtype)
    assert out.shape == (spec.batch, spec.q_heads, spec.q_len, spec.v_head_dim)
    torch.testing.assert_close(out.double(), _reference(spec, x), atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", sorted(MASKED))
def test_flex_baseline_matches_float64_on_cpu(name: str) -> None:
    spec = MASKED[name]
    x = make_inputs(spec, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns = bench.available_baselines(spec, "cpu", x.q, x.k, x.v, x.mask, names=("flex", "sdpa"))
    assert set(fns) == {"flex", "sdpa"}, f"flex did not run for {name}"
    for fn in fns.values():
        _assert_matches(fn(x.q, x.k, x.v, x.mask), spec, x)
    # a second input set (another mask tensor: padding lengths, bias values) gets its own prepared mask
    y = make_inputs(spec, seed=4)
    _assert_matches(fns["flex"](y.q, y.k, y.v, y.mask), spec, y)


def test_flex_never_materialises_a_dense_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """ALiBi from the (H,) slopes, padding from the (B, N) keep mask: no (B, H, N, N) tensor is built."""
    def dense(*args, **kwargs):
        raise AssertionError("flex built a dense mask")

    monkeypatch.setattr(bench, "additive_mask", dense)
    for name in ("alibi", "padding", "window"):
        spec = MASKED[name]
        x = make_inputs(spec, seed=0)
        bench.flex_baseline(spec, x.mask, "cpu", compiled=False)  # building: block mask + mods only


@pytest.mark.parametrize("spec", [
    AttentionSpec(1, 8, 8, 640, 640, 16, dtype="bfloat16", mask="alibi"),  # distances > 512: bf16 spacing 4
    AttentionSpec(2, 4, 2, 33, 70, 16, dtype="bfloat16", mask="padding", causal=True),
    AttentionSpec(2, 4, 4, 40, 40, 16, dtype="float16", mask="bias"),
    AttentionSpec(2, 4, 4, 40, 40, 16, dtype="bfloat16", mask="bool"),
    AttentionSpec(1, 4, 4, 50, 50, 16, dtype="bfloat16", causal=True, window=7),
    AttentionSpec(1, 4, 2, 20, 48, 16, dtype="bfloat16", causal=True),  # not square: bottom-right needs a mask
    AttentionSpec(1, 4, 4, 48, 48, 16, dtype="bfloat16", causal=True),
    AttentionSpec(2, 4, 2, 1, 48, 16, dtype="bfloat16", causal=True),  # decode: causal restricts nothing
], ids=lambda s: s.short())
def test_sdpa_baseline_matches_float64(spec: AttentionSpec) -> None:
    x = make_inputs(spec, seed=5)
    if spec.mask is MaskKind.BOOL:  # SDPA gives NaN for a row with no key, the reference 0: keep every row alive
        x = type(x)(x.q, x.k, x.v, x.mask | (torch.arange(spec.kv_len) == 0))
    fns = bench.available_baselines(spec, "cpu", x.q, x.k, x.v, x.mask)
    assert list(fns) == ["sdpa"]
    _assert_matches(fns["sdpa"](x.q, x.k, x.v, x.mask), spec, x)


def test_dense_mask_is_built_in_fp32_then_cast() -> None:
    spec = AttentionSpec(1, 8, 8, 640, 640, 16, dtype="bfloat16", mask="alibi", causal=True, window=600)
    x = make_inputs(spec, seed=0)
    got = bench.dense_mask(spec, x.mask, "cpu")
    fp32 = additive_mask(1, 8, 640, 640, causal=True, window=600, mask_kind="alibi", mask=x.mask,
                         dtype=torch.float32)
    assert got.dtype == torch.bfloat16 and torch.equal(got, fp32.to(torch.bfloat16))
    assert bench.dense_mask(spec, x.mask, "cpu", torch.float32).dtype == torch.float32


def test_sdpa_gets_a_mask_only_when_needed() -> None:
    plain = AttentionSpec(1, 2, 2, 64, 64, 16, dtype="bfloat16", causal=True)
    assert bench.sdpa_uses_is_causal(plain) and not bench.sdpa_needs_mask(plain)
    none = AttentionSpec(1, 2, 2, 64, 64, 16, dtype="bfloat16")
    assert not bench.sdpa_uses_is_causal(none) and not bench.sdpa_needs_mask(none)
    decode = AttentionSpec(1, 2, 2, 1, 64, 16, dtype="bfloat16", causal=True)
    assert not bench.sdpa_uses_is_causal(decode) and not bench.sdpa_needs_mask(decode)
    for spec in (AttentionSpec(1, 2, 2, 32, 64, 16, dtype="bfloat16", causal=True),
                 AttentionSpec(1, 2, 2, 64, 64, 16, dtype="bfloat16", causal=True, window=8),
                 AttentionSpec(1, 2, 2, 64, 64, 16, dtype="bfloat16", causal=True, mask="padding")):
        assert bench.sdpa_needs_mask(spec) and not bench.sdpa_uses_is_causal(spec), spec.short()


def test_masks_are_prepared_once_per_mask_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparing the mask inside every timed call would charge the baseline for work a user does once."""
    spec = AttentionSpec(2, 2, 2, 16, 16, 16, dtype="float32", mask="padding")
    sets = [make_inputs(spec, seed=i) for i in range(3)]
    built: list[torch.Tensor] = []
    real = bench.dense_mask

    def counting(spec, mask, *args, **kwargs):
        built.append(mask)
        return real(spec, mask, *args, **kwargs)

    monkeypatch.setattr(bench, "dense_mask", counting)
    fn = bench.baseline_fns(spec, "cpu")["sdpa"]
    for _ in range(3):
        for x in sets:
            _assert_matches(fn(x.q, x.k, x.v, x.mask), spec, x)
    assert len(built) == 3 and all(b is x.mask for b, x in zip(built, sets))
    x = sets[0]
    x.mask[:, 1:] = False  # edited in place: prepared again, and the result follows the new mask
    _assert_matches(fn(x.q, x.k, x.v, x.mask), spec, x)
    assert len(built) == 4


def test_baseline_names() -> None:
    spec = AttentionSpec(1, 2, 2, 16, 16, 16, dtype="float32")
    assert list(bench.baseline_fns(spec, "cpu")) == ["sdpa"]
    assert set(bench.baseline_fns(spec, "cpu", bench.BUILTIN_NAMES)) == {
        "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex"}
    with pytest.raises(ValueError, match="unknown"):
        bench.baseline_fns(spec, "cpu", ("xformers",))
    x = make_inputs(spec, seed=0)
    # forced CUDA backends do not run on CPU: dropped, not raised
    assert list(bench.available_baselines(spec, "cpu", x.q, x.k, x.v, x.mask, names=("sdpa", "sdpa_cudnn"))) == ["sdpa"]


def test_training_specs_time_forward_plus_backward_on_both_sides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A training spec's speedup compares training steps: the candidate's forward + Triton backward against the
    built-in's forward + autograd backward (timing a forward alone would tune training kernels for the wrong
    objective). Checked in-process on the CPU interpreter, where the numbers are informative only."""
    from avo_inductor.check import run as check_run
    from avo_inductor.kernels.loader import load_source
    from avo_inductor.kernels.render import default_genome
    from avo_inductor.search import evaluate
    from avo_inductor.search.operators import candidate_id, genome_hash
    from avo_inductor.search.types import Candidate

    spec = AttentionSpec(1, 2, 1, 32, 32, 16, dtype="float32", causal=True, needs_grad=True)
    genome = default_genome(spec)
    cand = Candidate(candidate_id(spec, genome_hash(genome)), spec, genome=genome)
    source, entry, bwd, launch = evaluate.materialize(cand)
    calls = {"backward": 0, "baseline_grad": 0}
    real_backward, real_step = check_run.launch.backward, bench.training_step

    def counting_backward(*args, **kwargs):
        calls["backward"] += 1
        return real_backward(*args, **kwargs)

    def counting_step(fn):
        step = real_step(fn)

        def run(*args):
            calls["baseline_grad"] += 1
            return step(*args)
        return run

    class Channel:  # the worker's channel to the parent: nothing to wait for in-process
        def progress(self, stage):
            pass

        def mark(self, tag):
            pass

        def sync(self, tag):
            pass

    monkeypatch.setattr(check_run.launch, "backward", counting_backward)
    monkeypatch.setattr(bench, "training_step", counting_step)
    state = check_run.WorkerState()
    state.loaded = load_source(source, entry, bwd, launch)
    monkeypatch.setattr(check_run, "_STATE", state)
    base = evaluate.handle_request({"op": "baselines", "spec": spec.to_dict(), "seeds": [1, 2]}, Channel())
    assert base.get("best") == "sdpa", base
    reply = evaluate.handle_request({"op": "time", "spec": spec.to_dict(), "seeds": [3, 4], "rounds": 2,
                                     "baseline": base["best"], "out_dir": str(tmp_path), "wall_calls": 1}, Channel())
    assert "error" not in reply, reply
    assert reply["candidate"]["median_ms"] > 0 and reply["baseline"]["median_ms"] > 0
    assert len(list(tmp_path.glob("timed*.pt"))) == 3  # every output buffer's last timed call comes back
    assert calls["backward"] >= 2 and calls["baseline_grad"] >= 2  # both sides ran backward in the timed rounds
