"""Forward kernels (Triton interpreter, 16-wide tiles) against the float64 reference over a curated grid.

Each case: fresh random inputs, NaN-poisoned out/lse, inputs unchanged afterwards, per-dtype tolerance.
The grid covers every mask kind, GQA/MQA, odd head dims (40, 111, 160), dv != d, lengths 1/17/113 with
q_len != kv_len, all three dtypes and every genome knob the template renders; PACKED_CASES repeat it for
pack_gqa (GQA groups packed into one tile's rows). Every case checks the LSE as well as the output.
"""
from __future__ import annotations

import pytest
import torch
from _kernel_cases import call_args, fresh, load, run_forward, snapshot, unchanged

from avo_inductor.kernels import launch
from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.kernels.reference import attention_reference, tolerance
from avo_inductor.kernels.render import check_renderable, default_genome, render
from avo_inductor.spec import AttentionSpec

# The interpreter evaluates log(0) / -inf - -inf in masked-out lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# (hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs)
CASES = [
    (2, 2, 17, 17, 16, 16, "float16", False, None, "none", {}),
    (4, 2, 17, 113, 40, 40, "float16", True, None, "none", {}),
    (4, 1, 113, 17, 111, 111, "bfloat16", True, None, "none", {}),            # MQA, q_len > kv_len: empty rows
    (2, 2, 1, 113, 80, 80, "float32", False, None, "bias", {}),
    (2, 1, 17, 33, 64, 32, "float16", True, None, "bias", {"causal_split": False}),
    (2, 2, 33, 33, 96, 96, "bfloat16", False, None, "bool", {"exp2": False}),
    (4, 2, 17, 40, 160, 160, "float16", False, None, "padding", {}),
    (2, 2, 33, 47, 32, 32, "float32", True, 9, "none", {}),
    (2, 1, 20, 20, 16, 24, "float16", False, 5, "alibi", {"lazy_rescale": True}),
    (4, 4, 1, 70, 32, 32, "bfloat16", False, None, "none", {"kv_splits": 4}),  # decode split-kv + reduce
    (2, 1, 5, 37, 48, 48, "float16", True, None, "bool", {"kv_splits": 2, "persistent": True, "pack_gqa": False}),
    (2, 2, 32, 48, 32, 32, "float16", True, None, "alibi", {"even_fast_path": True, "persistent": True}),
    (2, 2, 32, 32, 192, 192, "float16", True, None, "none", {"block_m": 32}),  # even lengths, d=192
    (2, 2, 17, 17, 224, 16, "float32", False, None, "none", {"exp2": False, "lazy_rescale": True}),
    # K/V through tensor descriptors (rows past N_KV read as zero), heaviest causal tiles first
    (4, 2, 17, 113, 40, 40, "float16", True, None, "none", {"use_tma": True}),
    (2, 1, 113, 1000, 72, 72, "bfloat16", True, 100, "bias", {"use_tma": True, "heavy_first": True}),
    (2, 2, 1, 70, 32, 24, "float16", False, None, "padding", {"use_tma": True, "kv_splits": 4}),
    (2, 2, 113, 17, 64, 64, "bfloat16", True, None, "alibi", {"heavy_first": True, "persistent": True}),
    # non-causal ALiBi: key blocks left of every row's diagonal, the band, blocks right of it (row-shifted scores)
    (2, 1, 113, 200, 24, 24, "float32", False, None, "alibi", {}),
    (2, 2, 113, 17, 40, 40, "bfloat16", False, None, "alibi", {"even_fast_path": False}),  # q_len > kv_len
    (2, 2, 64, 1000, 72, 72, "float16", False, None, "alibi", {"block_n": 32, "lazy_rescale": True}),
    (4, 4, 1, 1000, 40, 40, "float32", False, None, "alibi", {"kv_splits": 4, "pack_gqa": False}),
    # alibi_mma: the one-sided blocks' per-key ALiBi term from a depth-16 matmul, the rest per row: left/band/right
    # (ragged tail in the right range), causal full blocks, a sliding window, q_len > kv_len, base e, fp32, splits
    (2, 1, 113, 200, 24, 24, "float32", False, None, "alibi", {"alibi_mma": True}),
    (2, 2, 47, 150, 64, 64, "bfloat16", False, None, "alibi", {"alibi_mma": True, "block_n": 32}),
    (2, 2, 64, 150, 72, 72, "float16", False, None, "alibi", {"alibi_mma": True, "lazy_rescale": True}),
    (2, 2, 113, 17, 40, 40, "bfloat16", False, None, "alibi", {"alibi_mma": True, "even_fast_path": False}),
    (2, 2, 113, 113, 111, 111, "float16", True, None, "alibi", {"alibi_mma": True, "exp2": False}),
    (2, 1, 47, 150, 40, 40, "bfloat16", True, 100, "alibi", {"alibi_mma": True, "heavy_first": True}),
    (4, 4, 1, 150, 40, 40, "float32", False, None, "alibi", {"alibi_mma": True, "kv_splits": 4,
                                                             "pack_gqa": False}),
    (2, 2, 64, 64, 64, 64, "bfloat16", False, None, "alibi", {"alibi_mma": True, "even_fast_path": True}),
    # alibi_bound: tiles skip keys whose decay provably weighs nothing (kept where N_Q > N_KV); with alibi_mma,
    # base e, splits, causal and a window
    (2, 1, 47, 1000, 24, 24, "float32", False, None, "alibi", {"alibi_bound": True}),
    (2, 2, 47, 150, 40, 40, "bfloat16", True, None, "alibi", {"alibi_bound": True, "alibi_mma": True}),
    (2, 2, 64, 150, 72, 72, "float16", False, None, "alibi", {"alibi_bound": True, "exp2": False}),
    (4, 4, 1, 150, 40, 40, "float32", False, None, "alibi", {"alibi_bound": True, "kv_splits": 4,
                                                             "pack_gqa": False}),
    (2, 2, 113, 17, 40, 40, "bfloat16", False, None, "alibi", {"alibi_bound": True}),
    (2, 1, 47, 150, 40, 40, "bfloat16", True, 100, "alibi", {"alibi_bound": True}),
    # overlap_qk: the next block's QK^T before this block's softmax, on unmasked blocks (even lengths; causal and
    # window full blocks; an empty full-block range; splits; descriptors); masked blocks keep the plain loop
    (2, 2, 64, 128, 32, 32, "float16", False, None, "none", {"overlap_qk": True, "even_fast_path": True}),
    (2, 1, 113, 1000, 72, 72, "bfloat16", True, 100, "none", {"overlap_qk": True}),
    (4, 2, 64, 64, 40, 40, "float32", True, None, "none", {"overlap_qk": True, "block_m": 32, "heavy_first": True}),
    (4, 4, 1, 1024, 40, 40, "float16", False, None, "none", {"overlap_qk": True, "kv_splits": 4}),
    (2, 2, 48, 64, 64, 64, "bfloat16", False, None, "none", {"overlap_qk": True, "use_tma": True}),
    (2, 2, 17, 113, 24, 24, "float16", False, None, "bias", {"overlap_qk": True}),
    # split_combine: the last split program of each tile combines the partials (no reduce kernel): plain, causal
    # with rows past every key, persistent (tickets inside the tile walk), a window, splits past the last key
    (4, 4, 1, 70, 32, 32, "bfloat16", False, None, "none", {"kv_splits": 4, "split_combine": True}),
    (2, 1, 5, 37, 48, 48, "float16", True, None, "bool", {"kv_splits": 2, "persistent": True, "pack_gqa": False,
                                                          "split_combine": True}),
    (4, 4, 1, 1000, 40, 24, "float32", False, 300, "alibi", {"kv_splits": 16, "block_n": 32, "pack_gqa": False,
                                                              "split_combine": True}),
    (2, 2, 17, 17, 111, 111, "float16", True, None, "padding", {"kv_splits": 8, "split_combine": True}),
]


# Packed GQA (pack_gqa=True: the GROUP q heads of a kv head share the rows of one tile): groups 2/4/8 and MQA,
# q_len 1/3/17/113 (packed rows 2..904), kv_len 1/17/113/1000, every mask kind, causal/window (bottom-right
# aligned per row's real position, incl. rows with no key), odd head dims, split-kv + reduce, persistent, even path.
PACKED_CASES = [
    (2, 1, 1, 1, 40, 40, "float16", False, None, "none", {}),
    (4, 1, 1, 1000, 72, 72, "bfloat16", False, None, "none", {"kv_splits": 8, "block_n": 64}),
    (8, 1, 1, 113, 40, 40, "float32", True, None, "alibi", {"kv_splits": 4}),
    (8, 2, 1, 17, 72, 72, "float16", True, None, "padding", {}),               # causal decode: key 16 = block 2
    (4, 2, 1, 1000, 40, 40, "float32", True, 300, "bias", {"kv_splits": 16, "block_n": 32}),
    (16, 2, 3, 113, 40, 40, "bfloat16", True, None, "bias", {"kv_splits": 2}),
    (4, 2, 3, 1, 40, 40, "float32", True, None, "none", {}),                    # q_len > kv_len: empty rows
    (8, 1, 3, 1000, 72, 72, "float16", True, 100, "bool", {"kv_splits": 8, "block_n": 64}),
    (2, 1, 17, 113, 72, 72, "float16", False, 9, "none", {}),
    (6, 2, 11, 40, 40, 40, "float16", True, None, "alibi", {"persistent": True}),  # group 3: 33 rows, 3 tiles
    (4, 2, 17, 26, 72, 72, "float32", True, None, "none", {}),  # tile 0 = positions 0..7 needs key 16 (block 2)
    (8, 1, 17, 17, 40, 40, "float32", True, None, "bool", {"block_m": 64}),
    (4, 1, 17, 1000, 40, 24, "bfloat16", False, None, "bias", {"kv_splits": 4, "persistent": True,
                                                                  "block_n": 64}),
    (4, 2, 17, 113, 40, 40, "float16", True, 20, "alibi", {"lazy_rescale": True, "exp2": False}),
    (4, 1, 113, 17, 40, 40, "bfloat16", True, None, "none", {"block_m": 32}),  # MQA, q_len > kv_len
    (2, 1, 113, 113, 72, 72, "float32", False, 5, "alibi", {"causal_split": False, "block_m": 64}),
    (8, 2, 113, 1, 40, 40, "float16", False, None, "padding", {"block_m": 128}),
    (4, 2, 113, 1000, 40, 40, "float32", True, None, "padding", {"block_m": 64, "block_n": 64,
                                                                  "persistent": True}),
    (4, 2, 8, 64, 32, 32, "float16", False, None, "none", {"even_fast_path": True}),  # rows 16: EVEN_M, nq 8 is not
    (8, 2, 16, 48, 16, 16, "bfloat16", True, None, "none", {"even_fast_path": True, "block_m": 64}),
    (4, 1, 17, 113, 40, 40, "float16", True, None, "bool", {"use_tma": True, "heavy_first": True}),
    # split_combine on packed tiles: a decode group, rows past N_Q * GROUP, persistent, causal with empty rows
    (4, 1, 1, 1000, 72, 72, "bfloat16", False, None, "none", {"kv_splits": 8, "block_n": 64, "split_combine": True}),
    (6, 2, 3, 113, 40, 40, "float32", True, None, "alibi", {"kv_splits": 4, "split_combine": True}),
    (4, 1, 17, 1000, 40, 24, "bfloat16", False, None, "bias", {"kv_splits": 4, "persistent": True, "block_n": 64,
                                                                  "split_combine": True}),
    (4, 2, 3, 1, 40, 40, "float32", True, None, "none", {"kv_splits": 2, "split_combine": True}),
]


def _case_id(case) -> str:
    """A readable test id (``-k split_combine`` selects those cases): lengths, mask, the knobs set."""
    hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs = case
    return "-".join([f"{hq}x{hkv}", f"{nq}x{nk}", f"d{d}" if d == dv else f"d{d}v{dv}", dtype,
                     "causal" if causal else "full", *([f"window{window}"] if window else []), mask,
                     *(f"{k}={v}" for k, v in knobs.items())])


def _check_forward(spec, knobs):
    kernel = load(spec, **knobs)
    inp = fresh(spec)
    before = snapshot(inp)
    out, lse = run_forward(kernel, spec, inp)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **call_args(spec))
    assert out.dtype == spec.torch_dtype and not torch.isnan(out).any() and not torch.isnan(lse).any()
    atol, rtol = tolerance(spec.dtype)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert unchanged(inp, before)
    # LSE at each row's real (head, position): logsumexp of the reference scores, +inf where no key is allowed
    ref_lse = torch.logsumexp(_reference_scores(spec, inp), -1)
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isposinf(lse), empty)
    torch.testing.assert_close(lse.double()[~empty], ref_lse[~empty], atol=2e-2 if spec.dtype != "float32" else 1e-4,
                               rtol=1e-3)
    return kernel, inp, lse


@pytest.mark.parametrize("hq,hkv,nq,nk,d,dv,dtype,causal,window,mask,knobs", CASES, ids=map(_case_id, CASES))
def test_forward_matches_reference(hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs):
    spec = AttentionSpec(2 if nq < 64 else 1, hq, hkv, nq, nk, d, v_head_dim=dv, dtype=dtype, causal=causal,
                         window=window, mask=mask)
    _check_forward(spec, knobs)


@pytest.mark.parametrize("hq,hkv,nq,nk,d,dv,dtype,causal,window,mask,knobs", PACKED_CASES,
                         ids=map(_case_id, PACKED_CASES))
def test_packed_gqa_forward_matches_reference(hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs):
    spec = AttentionSpec(2 if nq * nk < 4096 else 1, hq, hkv, nq, nk, d, v_head_dim=dv, dtype=dtype, causal=causal,
                         window=window, mask=mask)
    kernel, inp, lse = _check_forward(spec, {"pack_gqa": True, **knobs})
    assert kernel.launch.pack_gqa and "PACK_GQA = tl.constexpr(True)" in kernel.path.read_text()


def _reference_scores(spec, inp):
    """float64 scaled scores with every mask applied (-inf where masked), q heads expanded over GQA groups."""
    from avo_inductor.kernels.reference import additive_mask

    g = spec.gqa_group
    q, k = inp.q.double(), inp.k.double().repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2)) * spec.effective_scale
    add = additive_mask(spec.batch, spec.q_heads, spec.q_len, spec.kv_len, causal=spec.causal, window=spec.window,
                        mask_kind=spec.mask.value, mask=inp.mask)
    return s if add is None else s + add.double()


def test_lse_is_logsumexp_and_inf_for_empty_rows():
    spec = AttentionSpec(1, 2, 2, 20, 17, 16, dtype="float32", causal=True, scale=0.25)
    inp = fresh(spec)
    _, lse = run_forward(load(spec), spec, inp)
    s = (inp.q.double() @ inp.k.double().transpose(-1, -2)) * 0.25
    keep = torch.arange(17)[None, :] <= torch.arange(20)[:, None] - 3
    ref = torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1)
    assert torch.isposinf(lse[:, :, :3]).all()
    torch.testing.assert_close(lse[:, :, 3:].double(), ref[:, :, 3:], atol=1e-5, rtol=1e-5)


def test_result_changes_with_inputs():
    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float16")
    kernel = load(spec)
    a, b = fresh(spec), fresh(spec)
    assert not torch.equal(run_forward(kernel, spec, a)[0], run_forward(kernel, spec, b)[0])


@pytest.mark.parametrize("pack", [False, True])
def test_padding_split_past_the_last_key_adds_nothing(pack):
    """kv_len 70 in 4 splits of 32 keys: the last split starts past the last key. Its kept-key span must stay
    empty; it once widened to the keys of the split before it, counting keys 64..67 twice (a padded decode)."""
    spec = AttentionSpec(2, 4, 2, 1, 70, 32, dtype="float32", mask="padding")
    inp = fresh(spec)
    inp = type(inp)(inp.q, inp.k, inp.v, torch.arange(70)[None, :] < torch.tensor([[68], [70]]))
    out, _ = run_forward(load(spec, kv_splits=4, pack_gqa=pack), spec, inp)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **call_args(spec))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_packed_launch_grids(monkeypatch):
    """pack_gqa: the forward walks B * Hkv heads and cdiv(Nq * GROUP, BLOCK_M) row tiles (times splits); the reduce
    packs all B * Hq * Nq rows, one per program (REDUCE_BLOCK_M); without it the grids are the ABI's unpacked ones."""
    grids = []
    real = launch._launch

    def recording(fn, grid, **kw):
        grids.append((fn.__name__, grid))
        real(fn, grid, **kw)

    monkeypatch.setattr(launch, "_launch", recording)
    spec = AttentionSpec(2, 8, 2, 3, 40, 16, dtype="float32")  # group 4: 12 packed rows per kv head
    assert launch.REDUCE_BLOCK_M == 1
    for knobs, fwd, red in (({"pack_gqa": True, "kv_splits": 2}, (2, 4), (48, 1)),
                            ({"pack_gqa": False, "kv_splits": 2}, (2, 16), (3, 16)),
                            ({"pack_gqa": True}, (1, 4), None),
                            ({"pack_gqa": True, "kv_splits": 2, "persistent": True}, (4,), (48, 1))):
        grids.clear()
        _check_forward(spec, knobs)
        assert grids[0] == ("attn_fwd", fwd), knobs
        assert grids[1:] == ([("attn_fwd_reduce", red)] if red else []), knobs


def test_split_combine_is_one_launch_with_fresh_tickets(monkeypatch):
    """split_combine: one launch of attn_fwd_split_combine over the split grid, no reduce kernel; its tickets come
    zeroed on every call (an eager plan reused from the plan cache too), so repeated calls stay exact; without
    kv_splits > 1 the knob changes nothing."""
    launches = []
    real = launch._launch

    def recording(fn, grid, **kw):
        launches.append((fn.__name__, grid, kw.get("TICKETS")))
        tickets = kw.get("TICKETS")
        if tickets is not None:
            assert tickets.dtype == torch.int32 and not tickets.any()  # zero before the launch
        real(fn, grid, **kw)
        if tickets is not None:  # every split of every tile took its ticket
            assert torch.equal(tickets, torch.full_like(tickets, kw["SPLITS"]))

    monkeypatch.setattr(launch, "_launch", recording)
    spec = AttentionSpec(2, 8, 2, 3, 40, 16, dtype="float32")  # group 4: 12 packed rows per kv head
    kernel = load(spec, pack_gqa=True, kv_splits=2, split_combine=True, block_m=16)
    inp = fresh(spec)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **call_args(spec))
    launch.PLANS.clear()
    for _ in range(3):
        out, _ = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, inp.mask, **call_args(spec))
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert [(name, grid) for name, grid, _ in launches] == [("attn_fwd_split_combine", (2, 4))] * 3
    assert launches[0][2].shape == (1 * 2 * 2,)  # one row tile per (batch, kv head)
    assert kernel.functions.split_combine is not None
    launches.clear()
    _check_forward(spec, {"pack_gqa": True, "split_combine": True})
    assert [name for name, _, _ in launches] == ["attn_fwd"]


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
@pytest.mark.parametrize("b,hq,hkv,nq,nk,causal,mask,knobs", [
    (2, 8, 2, 1, 300, False, "none", {"pack_gqa": True, "kv_splits": 4}),
    (2, 8, 2, 5, 300, True, "none", {"pack_gqa": True, "kv_splits": 4, "heavy_first": True}),
    (2, 4, 4, 40, 300, True, "none", {"pack_gqa": False, "kv_splits": 4, "heavy_first": True}),
    (2, 4, 2, 40, 300, True, "bool", {"pack_gqa": False, "kv_splits": 8, "persistent": True}),
    (2, 8, 2, 9, 200, False, "alibi", {"pack_gqa": True, "kv_splits": 2, "persistent": True}),
])
def test_split_combine_whichever_program_finishes_last(monkeypatch, order, b, hq, hkv, nq, nk, causal, mask, knobs):
    """The interpreter runs programs in grid order, so the last split of a tile always drew the last ticket; here
    the programs run reversed or shuffled (every one once), as a GPU may finish them, and the tile's combine must
    still wait for all its partials."""
    import random

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    state: dict[str, list] = {}

    def grid_dim(x, y, z):
        points = [(i, j, k) for i in range(x) for j in range(y) for k in range(z)]
        if order == "reversed":
            points.reverse()
        else:
            random.Random(x * 1000 + y).shuffle(points)
        state["points"], state["dims"] = points, [y * z, z]
        set_dim(x, y, z)

    def grid_idx(x, y, z):  # the loop's n-th program runs as the permutation's n-th point
        set_idx(*state["points"][x * state["dims"][0] + y * state["dims"][1] + z])

    monkeypatch.setattr(builder, "set_grid_dim", grid_dim)
    monkeypatch.setattr(builder, "set_grid_idx", grid_idx)
    spec = AttentionSpec(b, hq, hkv, nq, nk, 32, dtype="float32", causal=causal, mask=mask)
    _check_forward(spec, {"split_combine": True, "block_m": 16, **knobs})


def test_launch_config_pack_gqa_key():
    from avo_inductor.kernels.launch import LaunchConfig
    from avo_inductor.kernels.loader import static_violations

    rk = render(KernelGenome(pack_gqa=True, kv_splits=4), AttentionSpec(1, 8, 2, 1, 256, 64))
    assert rk.launch_dict["pack_gqa"] is True and "PACK_GQA = tl.constexpr(True)" in rk.source
    assert LaunchConfig.from_dict(rk.launch_dict).pack_gqa
    assert static_violations(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict) == []
    plain = render(KernelGenome(), AttentionSpec(1, 8, 2, 1, 256, 64))
    assert plain.launch_dict["pack_gqa"] is False and "PACK_GQA = tl.constexpr(False)" in plain.source
    legacy = {k: v for k, v in plain.launch_dict.items() if k != "pack_gqa"}  # records written before the knob
    assert not LaunchConfig.from_dict(legacy).pack_gqa
    for bad in (1, "true", None):
        with pytest.raises(ValueError, match="pack_gqa"):
            static_violations(rk.source, rk.entry_point, rk.bwd_entry_point, {**rk.launch_dict, "pack_gqa": bad})
    with pytest.raises(ValueError, match="unknown launch key"):
        LaunchConfig.from_dict({**rk.launch_dict, "pack_gqa_rows": True})


def test_render_marks_evolve_block_and_knobs():
    spec = AttentionSpec(1, 2, 2, 64, 64, 64, causal=True)
    g = KernelGenome(exp2=False, lazy_rescale=True, kv_splits=2)
    rk = render(g, spec)
    assert "# EVOLVE-BLOCK-START" in rk.source and "# EVOLVE-BLOCK-END" in rk.source
    assert "USE_EXP2 = tl.constexpr(False)" in rk.source and "LAZY_RESCALE = tl.constexpr(True)" in rk.source
    assert rk.launch_dict["grid"] == "splitkv" and rk.launch_dict["kv_splits"] == 2
    assert render(g.replace(persistent=True), spec).launch.grid == "persistent"


@pytest.mark.parametrize("genome,spec_kw,match", [
    (KernelGenome(use_tma=True), {"dtype": "float32"}, "use_tma"),
    (KernelGenome(use_tma=True), {"dtype": "float16", "head_dim": 36}, "16-byte rows"),
    (KernelGenome(template="flash_v9"), {}, "template"),
    (KernelGenome(), {"dropout_p": 0.1}, "dropout"),
    (KernelGenome(), {"head_dim": 320}, "head dim"),
])
def test_render_rejects_what_it_cannot_honour(genome, spec_kw, match):
    spec = AttentionSpec(**{**dict(batch=1, q_heads=2, kv_heads=2, q_len=16, kv_len=16, head_dim=64), **spec_kw})
    with pytest.raises(ValueError, match=match):
        check_renderable(genome, spec)


def test_default_genome_valid_for_gpu_and_cpu():
    from avo_inductor.spec import HardwareKey

    h100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
    for d in (40, 128, 256):
        for nq, nk in ((1, 4096), (4096, 4096), (17, 17)):
            spec = AttentionSpec(1, 8, 2, nq, nk, d, needs_grad=True)
            g = default_genome(spec, h100)
            render(g, spec)
            assert g.block_m <= max(16, 1 << (nq - 1).bit_length())
    assert default_genome(AttentionSpec(1, 8, 8, 1, 8192, 128), h100).kv_splits > 1


def test_default_genome_packs_gqa_decode():
    from avo_inductor.spec import HardwareKey

    h100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
    cpu = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
    for hw in (h100, cpu):
        assert default_genome(AttentionSpec(1, 32, 8, 1, 8192, 128), hw).pack_gqa
        assert default_genome(AttentionSpec(1, 32, 1, 16, 8192, 128), hw).pack_gqa          # MQA
        assert not default_genome(AttentionSpec(1, 32, 32, 1, 8192, 128), hw).pack_gqa      # MHA: nothing to pack
        assert not default_genome(AttentionSpec(1, 32, 8, 1024, 1024, 128), hw).pack_gqa   # prefill
    # the packed tile holds q_len * group rows: 16 queries x 4 heads fit one 64-row tile
    assert default_genome(AttentionSpec(1, 32, 8, 16, 8192, 128), h100).block_m == 64
    assert default_genome(AttentionSpec(1, 32, 8, 1, 8192, 128), h100).block_m == 16


@pytest.mark.parametrize("batch,kv_len,want", [
    (1, 32768, 16),  # 8 packed tiles x 16 splits: one wave of 128 programs on 132 SMs
    (1, 2048, 8),    # doubled from 4 (one split per 512 keys) toward a wave, held at 256 keys per split
    (8, 8192, 16),   # 64 tiles: the one-split-per-512-keys rule already fills the GPU
    (32, 4096, 8),
    (1, 300, 1),     # a split under 256 keys is not worth its reduction
])
def test_default_decode_splits_fill_the_gpu(batch, kv_len, want):
    from avo_inductor.spec import HardwareKey

    h100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
    g = default_genome(AttentionSpec(batch, 32, 8, 1, kv_len, 128), h100)
    assert g.kv_splits == want
    assert kv_len // g.kv_splits >= 256 or g.kv_splits == 1


@pytest.mark.parametrize("knobs", [{}, {"kv_splits": 4}, {"pack_gqa": True, "persistent": True}])
@pytest.mark.parametrize("keep_at", ["holes", "suffix", "none"])
def test_key_keep_vector_skips_masked_ends(keep_at, knobs):
    """A keep-mask constant over queries and heads ((B, 1, 1, Nk) bool, a padding mask's layout) narrows each
    tile's key loop to its first..last kept key: leading and trailing masked keys, holes in between, a batch with
    no kept key (rows give 0, lse +inf), and split-kv chunks that hold no kept key."""
    spec = AttentionSpec(3, 4, 2, 17, 300, 40, dtype="float32", causal=True, window=200, mask="bool")
    inp = fresh(spec)
    keep = torch.zeros(3, 300, dtype=torch.bool)
    if keep_at == "holes":
        keep[0, 70:150] = True
        keep[0, 100:110] = False
        keep[1, 5] = keep[1, 290] = True
    elif keep_at == "suffix":  # left padding
        keep[0, 250:] = keep[1, 17:] = True
    keep[2, 299] = keep_at != "none"  # "none": batch 2 keeps nothing at all
    mask = keep[:, None, None, :]
    kernel = load(spec, **knobs)
    out, lse = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, mask,
                              out=torch.full_like(inp.q, float("nan")),
                              lse=torch.full(inp.q.shape[:3], float("nan")), **call_args(spec))
    ref = attention_reference(inp.q, inp.k, inp.v, mask=mask, **call_args(spec))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    assert torch.isposinf(lse[2]).all() == (keep_at == "none")


@pytest.mark.parametrize("dtype,causal,knobs", [
    ("float32", False, {}),
    ("bfloat16", False, {"alibi_mma": True}),
    ("float16", True, {"exp2": False}),
])
def test_alibi_bound_skips_keys_that_weigh_nothing(dtype, causal, knobs):
    """Steep slopes (2 and 4 per key): keys beyond ~40 positions of a row weigh < 2^-36 of its sum, so the bounded
    kernel must not read their V at all, proven by V poisoned with NaN there (a kernel that reads them returns
    NaN), and must still match the float64 reference over the unpoisoned values to the dtype's tolerance."""
    spec = AttentionSpec(1, 2, 2, 64, 1000, 32, dtype=dtype, causal=causal, mask="alibi")
    inp = fresh(spec)
    slopes = torch.tensor([2.0, 4.0])
    far = torch.arange(spec.kv_len) < spec.kv_len - spec.q_len - 200  # keys >= 200 before every row's diagonal
    ref = attention_reference(inp.q, inp.k, inp.v, mask=slopes, **call_args(spec))
    v = inp.v.clone()
    v[:, :, far] = float("nan")
    kernel = load(spec, alibi_bound=True, **knobs)
    out = torch.full((1, 2, spec.q_len, 32), float("nan"), dtype=spec.torch_dtype)
    lse = torch.full((1, 2, spec.q_len), float("nan"))
    launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, v, slopes, out=out, lse=lse, **call_args(spec))
    atol, rtol = tolerance(dtype)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("scale_qk", [3.0, 30.0, 1e4])
def test_alibi_bound_keeps_every_key_when_scores_could_outweigh_the_decay(scale_qk):
    """q and k scaled up, the first keys aligned with query 0 (its largest scores lie far from its diagonal): the
    Cauchy-Schwarz bound then reaches past the sequence (at 1e4 it overflows), so no key may be skipped: the
    bounded kernel returns exactly the unbounded one's output, which far keys dominate (float64 reference, up to
    fp32's own error at scores this large)."""
    spec = AttentionSpec(1, 2, 2, 33, 150, 16, dtype="float32", mask="alibi")
    inp = fresh(spec)
    q, k = inp.q * scale_qk, inp.k * scale_qk
    k[:, :, :5] = q[:, :, :1] * 3
    slopes = torch.tensor([0.5, 0.05])
    outs = []
    for bound in (True, False):
        kernel = load(spec, alibi_bound=bound)
        outs.append(launch.forward(kernel.functions, kernel.launch, q, k, inp.v, slopes, **call_args(spec))[0])
    assert torch.isfinite(outs[0]).all() and torch.equal(outs[0], outs[1])
    if scale_qk < 100:
        ref = attention_reference(q, k, inp.v, mask=slopes, **call_args(spec))
        torch.testing.assert_close(outs[0].double(), ref, atol=2e-3, rtol=2e-3)
