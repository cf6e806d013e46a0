"""Attention sites in the FX graph Dynamo hands a backend: typed matches, or the reason a site was left alone.

``find_attention_sites(gm)`` anchors on every SDPA call and every softmax; a softmax that sits between two
matmuls is parsed with the grammar in ``patterns.py``. Anything that looks like attention (softmax over a matmul)
but does not parse becomes a ``SkippedSite`` with a reason, which ``explain()`` shows. Detection is pure: the
graph is not modified.

Policy: q/k/v are taken after layout transposes and before GQA repeats (repeat_interleave / repeat_kv), so the
kernel does GQA itself; scales on q, k or the scores fold into one constant; masks fold into causal / window flags
when they are shape-only (see ``masks.py``), else stay a tensor (BOOL keep-mask, PADDING (B, 1, 1, Nk) bool, or
BIAS). A keep-mask and-ed from shape-only and data factors (transformers' masking_utils: causal / window & padding)
becomes the flags plus its data factors; a bias that is verified slopes x positions becomes ALIBI (``alibi.py``).
SDPA's ``is_causal`` counts as causal only when Nq == Nk is provable (SDPA aligns it top-left).
Skipped: softmax not over the last dim, scores scaled by a tensor, masked_fill/where with a value that does not
mask, probabilities or scores used elsewhere (``output_attentions``), einsum, dtypes other than fp16/bf16/fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..spec import DTYPES, AttentionSpec, MaskKind
from .fx_utils import arg, example, hint, is_symbolic, module_path, shape_of, single_user, sym_expr, tensor_meta
from .masks import MaskTerm, Pattern, TermKind, classify_term, factor_keep_term, masking_fill, swamps_scores
from .alibi import AlibiFit, fit_alibi, fit_cache
from .patterns import (
    Unsupported, is_matmul, is_qk, is_sdpa, is_softmax, merge_step, peel_key, peel_repeat, peel_scale, prob_step,
    reaches_qk, score_step, sdpa_arguments, softmax_dim, softmax_dtype, unmerge_heads,
)


@dataclass(frozen=True)
class AttentionMatch:
    """One understood attention site.

    ``q``/``v`` are (B, Hq, Nq, D) / (B, Hkv, Nk, Dv) nodes before any GQA repeat; ``k`` is (B, Hkv, Nk, D), or
    its transpose (B, Hkv, D, Nk) when ``k_is_transposed`` (the rewrite then transposes it back). ``rank3`` sites
    (bmm on (B*H, N, D)) are run as batch 1 with B*H heads. ``scale`` is the concrete softmax scale (the spec
    holds None when it is the default 1/sqrt(D)). ``mask`` is the one tensor the kernel reads (None if none or if
    several ``mask_terms`` are combined by the rewrite); causal / window masks are folded into flags. For ALIBI,
    ``mask`` is the graph node holding the Hq slopes (any shape) and the kernel's slopes are
    ``alibi_scale * mask.reshape(-1)``; ``mask_terms`` keep the bias as written (the SDPA rewrite adds it as is).
    ``note``: why a bias with per-head slopes was not read as ALiBi (for explain()).
    ``empty_rows_mean``: every mask gives masked keys a finite score (finfo.min, as transformers' eager masks do), so
    eager gives a query row whose every key is masked the mean of v, where the kernels and SDPA give 0: the rewrite
    then adds ``empty_rows.mean_where_no_key`` after the call.
    """

    output: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    mask: fx.Node | None
    mask_kind: MaskKind
    causal: bool
    window: int | None
    scale: float
    dropout_p: float
    spec: AttentionSpec
    module_path: str
    pattern: str
    nodes: tuple[fx.Node, ...] = ()
    mask_terms: tuple[MaskTerm, ...] = ()
    k_is_transposed: bool = False
    rank3: bool = False
    alibi_scale: float = 1.0
    note: str = ""
    empty_rows_mean: bool = False


@dataclass(frozen=True)
class SkippedSite:
    """Something attention-like the detector left untouched, and why."""

    node: fx.Node
    module_path: str
    pattern: str
    reason: str


def find_attention_sites(gm: fx.GraphModule) -> list[AttentionMatch | SkippedSite]:
    """Every attention site of ``gm`` in graph order: SDPA calls and hand-written softmax(q k^T) v chains."""
    sites: list[AttentionMatch | SkippedSite] = []
    with fit_cache():
        for node in list(gm.graph.nodes):
            if is_sdpa(node):
                sites.append(_guard(gm, node, "sdpa", _match_sdpa))
            elif is_softmax(node) and _attention_like(node):
                sites.append(_guard(gm, node, "matmul_softmax", _match_handwritten))
    return sites


def _guard(gm: fx.GraphModule, node: fx.Node, pattern: str, fn: Any) -> AttentionMatch | SkippedSite:
    try:
        return fn(gm, node)
    except Unsupported as exc:
        return SkippedSite(node, module_path(node), pattern, str(exc))
    except ValueError as exc:  # AttentionSpec validation: shapes / dtypes the kernels do not take
        return SkippedSite(node, module_path(node), pattern, f"unsupported spec: {exc}")
    except Exception as exc:  # a detector bug on one odd graph shape must not cost the other sites
        return SkippedSite(node, module_path(node), pattern, f"internal error: {type(exc).__name__}: {exc}")


def _attention_like(softmax: fx.Node) -> bool:
    """A softmax whose input comes from a matmul or whose output feeds one (else: a classifier head, a router...)."""
    if reaches_qk(softmax.args[0]):
        return True
    frontier = list(softmax.users)
    for _ in range(4):
        nxt: list[fx.Node] = []
        for user in frontier:
            if is_matmul(user) or getattr(user.target, "__name__", "") == "einsum":
                return True
            nxt.extend(user.users)
        frontier = nxt
    return False


# ---- SDPA ------------------------------------------------------------------------------------------------
def _match_sdpa(gm: fx.GraphModule, node: fx.Node) -> AttentionMatch:
    a = sdpa_arguments(node)
    q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    if not (isinstance(q, fx.Node) and isinstance(k, fx.Node) and isinstance(v, fx.Node)):
        raise Unsupported("q/k/v are not graph tensors")
    if not isinstance(a["is_causal"], bool) or not isinstance(a["enable_gqa"], bool):
        raise Unsupported("non-constant is_causal / enable_gqa")
    dropout_p = _number(a["dropout_p"], "dropout_p")
    scale = None if a["scale"] is None else _number(a["scale"], "scale")
    k0, nk = peel_repeat(k)
    v0, nv = peel_repeat(v)
    if nk != nv:
        k0, v0 = k, v
    if mask is not None and not isinstance(mask, fx.Node):
        raise Unsupported("mask is not a tensor")
    terms = () if mask is None else (MaskTerm(mask, TermKind.KEEP if _is_bool(mask) else TermKind.BIAS),)
    return _build(gm, node, "sdpa", q, k0, v0, transposed_k=False, scale=scale, terms=terms, dropout_p=dropout_p,
                  sdpa_causal=a["is_causal"], nodes=(node, k, v))


def _number(value: object, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    ev = example(value)
    if isinstance(ev, (torch.SymFloat, torch.SymInt)):
        return float(hint(ev))
    raise Unsupported(f"non-constant {what}")


def _is_bool(node: fx.Node) -> bool:
    meta = tensor_meta(node)
    return meta is not None and meta.dtype == torch.bool


# ---- hand-written ----------------------------------------------------------------------------------------
def _match_handwritten(gm: fx.GraphModule, softmax: fx.Node) -> AttentionMatch:
    dim, dtype = softmax_dim(softmax), softmax_dtype(softmax)
    rank = len(shape_of(softmax) or ())
    if dim not in (-1, rank - 1):
        raise Unsupported(f"softmax over dim {dim!r}, not the key dim")
    if dtype not in (None, torch.float32):
        raise Unsupported(f"softmax in {dtype}")
    # forward: softmax -> (cast | dropout)* -> matmul(probs, v)
    nodes, dropout_p, cur, merged = [softmax], 0.0, softmax, None
    while True:
        user = single_user(cur)
        if user is None:
            raise Unsupported("attention probabilities are used outside the site")
        if is_matmul(user) and user.args[0] is cur:
            pv = user
            break
        merge = merge_step(user) if merged is None else None
        if merge is not None and merge[0] is cur:
            merged = merge[1]
            nodes.append(user)
            cur = user
            continue
        prob = prob_step(user)
        if prob is None or prob[0] is not cur:
            raise Unsupported(f"unrecognised op between softmax and the PV matmul ({_describe(user)})")
        dropout_p = max(dropout_p, prob[1])
        nodes.append(user)
        cur = user
    nodes.append(pv)
    # backward: softmax input -> (score op)* -> qk matmul
    scale, terms, split = 1.0, [], None
    scores: fx.node.Argument = softmax.args[0]
    while not is_qk(scores):
        if not isinstance(scores, fx.Node) or (step := score_step(scores)) is None:
            raise Unsupported(f"unrecognised op between the QK matmul and softmax ({_describe(scores)})")
        if len(scores.users) != 1:
            raise Unsupported("attention scores are used outside the site")
        if step.term is not None:
            node, kind, sign = step.term
            if not isinstance(node, fx.Node):
                raise Unsupported("mask is not a tensor")
            terms.append(MaskTerm(node, kind, scale * sign if kind is TermKind.BIAS else 1.0, heads=split,
                                  fill=step.fill, sum_dtype=_dtype(scores) if kind is TermKind.BIAS else None))
        if step.split_heads is not None:
            if split is not None:
                raise Unsupported("scores split into heads twice")
            split = step.split_heads  # terms nearer the qk matmul are in the (B*H, Nq, Nk) frame
        scale *= step.scale
        nodes.append(scores)
        scores = step.source
    if split != merged:
        raise Unsupported(f"scores viewed as (B, H, Nq, Nk) with H={split} but probabilities merged with H={merged} "
                          f"before the PV matmul")
    qk = scores
    nodes.append(qk)
    if qk.target == "baddbmm" or qk.target is torch.baddbmm:
        bias, q_op, k_op = arg(qk, 0, "input"), arg(qk, 1, "batch1"), arg(qk, 2, "batch2")
        beta = _number(qk.kwargs.get("beta", 1.0), "beta")
        if beta != 0.0:  # beta * input + alpha * (q @ k^T): input is a bias scaled by beta, not by alpha
            if not isinstance(bias, fx.Node):
                raise Unsupported("mask is not a tensor")
            terms.append(MaskTerm(bias, TermKind.BIAS, scale * beta, heads=split))
        scale *= _number(qk.kwargs.get("alpha", 1.0), "alpha")
    else:
        q_op, k_op = qk.args[:2]
    v_op = pv.args[1]
    if not (isinstance(q_op, fx.Node) and isinstance(k_op, fx.Node) and isinstance(v_op, fx.Node)):
        raise Unsupported("q/k/v are not graph tensors")
    q, q_factor = peel_scale(q_op)
    k, k_is_k, k_factor, n_rep = peel_key(k_op)
    v, v_rep = peel_repeat(v_op)
    if n_rep != v_rep:  # repeated one way only: keep both repeated, which is still exact
        k, k_is_k, k_factor, _ = peel_key(k_op, gqa=False)
        v = v_op
    if split is not None:  # BLOOM: (B*H, N, D) views of (B, H, N, D) q/k/v; the site runs in the 4-D frame
        q4, k4, v4 = (unmerge_heads(x, split) for x in (q, k, v))
        if q4 is None or k4 is None or v4 is None:
            raise Unsupported(f"scores viewed as (B, {split}, Nq, Nk) but q/k/v are not (B*H, N, D) views of "
                              f"(B, H, N, D) tensors")
        q, k, v = q4, k4, v4
    nodes.extend([q_op, k_op, v_op])
    scale *= q_factor * k_factor
    if not math.isfinite(scale) or scale <= 0:
        raise Unsupported(f"softmax scale {scale} is not a positive finite number")
    q_dtype = getattr(tensor_meta(q), "dtype", None)
    upcast = q_dtype is not torch.float32 and (dtype is torch.float32 or _dtype(softmax) is torch.float32)
    pattern = "matmul_softmax" + ("[fp32]" if upcast else "")
    return _build(gm, pv, pattern, q, k, v, transposed_k=not k_is_k, scale=scale, terms=tuple(terms),
                  dropout_p=dropout_p, sdpa_causal=False, nodes=tuple(nodes))


def _describe(node: object) -> str:
    """The op and the node, for a skip reason: ``view (attn_weights)``."""
    if not isinstance(node, fx.Node):
        return repr(node)
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} ({node.name})"


def _dtype(node: fx.Node) -> torch.dtype | None:
    return getattr(tensor_meta(node), "dtype", None)


# ---- spec ------------------------------------------------------------------------------------------------
def _build(gm: fx.GraphModule, output: fx.Node, pattern: str, q: fx.Node, k: fx.Node, v: fx.Node, *,
           transposed_k: bool, scale: float | None, terms: tuple[MaskTerm, ...], dropout_p: float,
           sdpa_causal: bool, nodes: tuple[fx.Node, ...]) -> AttentionMatch:
    qs, ks, vs = shape_of(q), shape_of(k), shape_of(v)
    if qs is None or ks is None or vs is None:
        raise Unsupported("q/k/v without tensor metadata")
    if not (len(qs) == len(ks) == len(vs) and len(qs) in (3, 4)):
        raise Unsupported(f"q/k/v ranks {len(qs)}/{len(ks)}/{len(vs)} (need 4-D, or 3-D bmm)")
    rank3 = len(qs) == 3
    if transposed_k:
        ks = (*ks[:-2], ks[-1], ks[-2])
    dims = dict(zip(("batch", "q_heads", "q_len", "head_dim"), (1, *qs) if rank3 else qs, strict=True))
    dims.update(zip(("kv_heads", "kv_len", "k_dim"), ks[-3:], strict=True))
    dims["v_head_dim"] = vs[-1]
    if hint(dims["k_dim"]) != hint(dims["head_dim"]) or hint(vs[-2]) != hint(dims["kv_len"]):
        raise Unsupported(f"q/k/v shapes do not line up: q {qs}, k {ks}, v {vs}")
    if hint(ks[0]) != hint(qs[0]) and not rank3:
        raise Unsupported(f"q batch {qs[0]} != k batch {ks[0]}")
    q_meta = tensor_meta(q)
    assert q_meta is not None
    dtype = str(q_meta.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise Unsupported(f"dtype {dtype} (kernels take {DTYPES})")
    if any(_dtype(x) != q_meta.dtype for x in (k, v, output)):
        raise Unsupported(f"q, k, v and the output have different dtypes "
                          f"({q_meta.dtype}, {_dtype(k)}, {_dtype(v)}, {_dtype(output)})")

    causal, window, generic = sdpa_causal, None, []
    # per masking term: the score it gives a masked key, and whether it is added (a where-bias) or replaces
    fills: list[tuple[float, bool]] = [(float("-inf"), False)] if sdpa_causal else []
    for term in terms:
        pat, w = classify_term(gm, term, dims["q_len"], dims["kv_len"])
        factored = factor_keep_term(gm, term, dims["q_len"], dims["kv_len"], q_meta.dtype) \
            if pat is Pattern.GENERIC else None
        if factored is not None:
            pat, w, data_factors = factored  # causal/window & padding: flags + the padding tensor
            generic.extend(data_factors)
            fills.append((data_factors[0].fill, term.kind is TermKind.BIAS))
        elif pat in (Pattern.CAUSAL, Pattern.WINDOW):
            fills.append((masking_fill(gm, term, q_meta.dtype), term.kind is TermKind.BIAS))
        if pat is Pattern.ALL:
            continue
        if pat is Pattern.CAUSAL:
            causal = True
        elif pat is Pattern.WINDOW and w is not None:
            causal, window = True, min(w, window or w)
        else:
            generic.append(term)
            if term.kind is not TermKind.BIAS:
                fills.append((term.fill, False))
    equal_lens = sym_expr(dims["q_len"]) == sym_expr(dims["kv_len"])
    if sdpa_causal and not equal_lens:
        raise Unsupported("is_causal=True with q_len != kv_len: SDPA aligns it top-left, the avo kernel bottom-right")
    alibi, note = _alibi(gm, generic, dims, causal, window)
    mask: fx.Node | None
    if alibi is not None:
        causal = causal or alibi.causal
        window = min(w for w in (window, alibi.window) if w is not None) if (window or alibi.window) else None
        mask_kind, mask = MaskKind.ALIBI, alibi.slopes
        pattern += "[alibi]"
    else:
        mask_kind, mask = _mask_kind(generic, dims)
    sym_dims = tuple(name for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "v_head_dim")
                     if is_symbolic(dims[name]))
    head_dim = int(hint(dims["head_dim"]))
    default_scale = 1.0 / math.sqrt(head_dim)
    eff_scale = default_scale if scale is None else scale
    spec = AttentionSpec(
        batch=int(hint(dims["batch"])), q_heads=int(hint(dims["q_heads"])), kv_heads=int(hint(dims["kv_heads"])),
        q_len=int(hint(dims["q_len"])), kv_len=int(hint(dims["kv_len"])), head_dim=head_dim,
        v_head_dim=int(hint(dims["v_head_dim"])), dtype=dtype,
        scale=None if math.isclose(eff_scale, default_scale, rel_tol=1e-6) else eff_scale,
        causal=causal, window=window, mask=mask_kind, dropout_p=dropout_p,
        needs_grad=any(bool(getattr(tensor_meta(x), "requires_grad", False)) for x in (q, k, v)), dynamic=sym_dims,
    )
    if dropout_p:
        pattern += "[dropout]"
    if spec.kv_heads != spec.q_heads:
        pattern += "[gqa]"
    return AttentionMatch(
        output=output, q=q, k=k, v=v, mask=mask, mask_kind=mask_kind, causal=causal, window=window, scale=eff_scale,
        dropout_p=dropout_p, spec=spec, module_path=module_path(output), pattern=pattern, nodes=nodes,
        mask_terms=tuple(generic), k_is_transposed=transposed_k, rank3=rank3,
        alibi_scale=alibi.factor if alibi is not None else 1.0, note=note,
        empty_rows_mean=_empty_rows_mean(fills, generic, causal, dims["q_len"], dims["kv_len"], q_meta.dtype),
    )


def _empty_rows_mean(fills: list[tuple[float, bool]], generic: list[MaskTerm], causal: bool, q_len: Any,
                     kv_len: Any, score_dtype: torch.dtype) -> bool:
    """Whether eager gives a row whose every key is masked the mean of v over every key (AttentionMatch).

    That needs every masked key of the row at one and the same finite score: one fill shared by every masking
    term (differing fills leave eager uniform over the keys at the highest one), no two finite fills added up
    (finfo.min + finfo.min is -inf), and a bias the fill swamps (finfo.min + bias is finfo.min; a milder fill
    plus a bias is a softmax of the bias). And some row must be able to see no key: a keep-mask tensor is read
    (padding), or a bottom-right aligned causal / window mask meets more queries than keys."""
    values = {fill for fill, _ in fills}
    if len(values) != 1 or not math.isfinite(fill := values.pop()):
        return False
    additive = sum(added for _, added in fills)
    if additive and len(fills) > 1:
        return False
    if any(t.kind is TermKind.BIAS for t in generic) and not swamps_scores(fill, score_dtype):
        return False
    if any(t.kind is not TermKind.BIAS for t in generic):
        return True
    return causal and not statically_known_true(q_len <= kv_len)


def _alibi(gm: fx.GraphModule, generic: list[MaskTerm], dims: dict[str, Any], causal: bool,
           window: int | None) -> tuple[AlibiFit | None, str]:
    """The ALiBi reading of the site's one bias tensor (see ``alibi.py``), else (None, why not when it had
    per-head slopes). A bias beside another mask tensor stays a bias: the kernels read one mask operand."""
    notes = []
    for term in generic:
        if term.kind is not TermKind.BIAS:
            continue
        fit = fit_alibi(gm, term, dims["q_len"], dims["kv_len"], int(hint(dims["q_heads"])), causal, window)
        if isinstance(fit, AlibiFit):
            if len(generic) == 1:
                return fit, ""
            notes.append("ALiBi beside another mask tensor (the kernels read one mask operand)")
        elif fit is not None:
            notes.append(fit)
    return None, f"bias kept: not ALiBi ({notes[0]})" if notes else ""


def _mask_kind(generic: list[MaskTerm], dims: dict[str, Any]) -> tuple[MaskKind, fx.Node | None]:
    """Kind of the tensor mask left after causal/window folding; PADDING for a (B, 1, 1, Nk) bool keep-mask."""
    if not generic:
        return MaskKind.NONE, None
    if any(t.kind is TermKind.BIAS for t in generic):
        return MaskKind.BIAS, generic[0].node if len(generic) == 1 else None
    if len(generic) > 1:
        return MaskKind.BOOL, None
    node = generic[0].node
    shape = shape_of(node) or ()
    if (len(shape) == 4 and hint(shape[1]) == 1 and hint(shape[2]) == 1
            and sym_expr(shape[0]) == sym_expr(dims["batch"]) and sym_expr(shape[3]) == sym_expr(dims["kv_len"])):
        return MaskKind.PADDING, node
    return MaskKind.BOOL, node
