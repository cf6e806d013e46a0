"""ALiBi recognised by its structure: a bias term that is ``slopes[h] * key position`` up to a per-row constant.

BLOOM (``slopes * arange(Nk)``, through baddbmm), Falcon (``slopes.bfloat16() * positions / sqrt(d)`` folded
into the causal mask) and MPT (``arange(1 - N, 1) * slopes``) all write ALiBi as slopes times key positions; the
relative form ``slopes * (k_pos - q_pos)`` differs from it by a constant per query row, which softmax cancels. Under
a causal mask that is exactly the kernel's ``-slope * |i + off - j|``; without one only the symmetric form is.

Verification, never a guess: the slopes candidate (a float node with Hq elements feeding the term) is replaced by
random probe vectors and the term is re-evaluated in float64 (casts after the slopes are kept exact, see below);
the result must be ``alpha * probe[h] * x[i, j] + c[b, h, i]`` on every allowed key of every row, with one
``alpha`` for every head, probe and evaluation point. So the term is linear in those slopes with the ALiBi
position structure whatever their values; a bias that only looks like it (noise added, another head order,
positions from user data) fails and stays a ``bias``. The slopes reach the kernel as the graph node itself
(computed at run time), times ``alpha`` and the scales applied after the term.

Precision: casts after the slopes are treated as exact. A bf16 model rounds ``slope * position`` to bf16 (an error
up to ulp(slope * N) / 2 in a logit); the kernel computes it in fp32, which is ALiBi's definition. Slopes that
are themselves rounded first (Falcon's ``slopes.bfloat16()``) are taken after that cast: the same values.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .fx_utils import example, hint, is_symbolic, tensor_meta
from .masks import NEG_THRESHOLD, Evaluator, MaskTerm, NotConstant, Pattern, evaluation_points, in_site_frame, \
    is_shape_only, pattern_2d

_CASTS = ("to", "float", "half", "bfloat16", "double", "type", "type_as")
_PROBE_SEEDS = (1234, 4321)
_REL_TOL = 1e-6  # float64 probe arithmetic; a residual above this is structure, not rounding
# Probe slopes ~1e-3: probe x position stays far above NEG_THRESHOLD at any length, so only real masking counts
_PROBE_SIZE = 1e-3
_MAX_CANDIDATES = 4
_FITS: ContextVar[dict[tuple[Any, ...], Any] | None] = ContextVar("avo_alibi_fits", default=None)
_ROWS = 64  # query rows checked for a term without a query dim (see _fit_values)
_MAX_WALK = 64


@dataclass(frozen=True)
class AlibiFit:
    """A verified ALiBi term: the kernel's slopes are ``factor * slopes.reshape(-1)`` (Hq values).

    ``causal`` / ``window``: keys the term itself masks (Falcon folds the causal mask into the bias tensor).
    """

    slopes: fx.Node
    factor: float
    causal: bool
    window: int | None


class _ProbeEvaluator(Evaluator):
    """Evaluator that keeps floating values in float64 through dtype casts (the probe path stays exact)."""

    def _eval(self, node: fx.Node) -> Any:
        if node.op == "call_method" and node.target in _CASTS and node.args:
            src = self(node.args[0])
            if isinstance(src, torch.Tensor) and src.is_floating_point():
                return src
        return super()._eval(node)


def _candidates(node: fx.Node, heads: int) -> list[fx.Node]:
    """Float nodes with ``heads`` elements among the term's producers, nearest first (the slopes as used)."""
    out: list[fx.Node] = []
    frontier, seen = [node], {node}
    while frontier and len(seen) < _MAX_WALK and len(out) < _MAX_CANDIDATES:
        nxt: list[fx.Node] = []
        for n in frontier:
            meta = tensor_meta(n)
            if meta is not None and n is not node and meta.is_floating_point() and not is_symbolic(meta.numel()) \
                    and int(meta.numel()) == heads and meta.dim() >= 1:
                out.append(n)
                continue
            for src in n.all_input_nodes:
                if src not in seen:
                    seen.add(src)
                    nxt.append(src)
        frontier = nxt
    return out


def fit_alibi(gm: fx.GraphModule, term: MaskTerm, q_len: Any, kv_len: Any, heads: int, causal: bool,
              window: int | None) -> AlibiFit | str | None:
    """The ALiBi reading of a BIAS ``term`` of a site with ``heads`` q heads, or the reason there is none (None
    when no per-head slopes feed the term: an ordinary bias).

    ``causal`` / ``window``: the site's structure from its other terms (keys outside it are not compared).
    """
    # Layers share one bias node (BLOOM's alibi, Falcon's combined mask): fit it once per detection pass.
    cache = _FITS.get()
    key = (term.node, term.factor, term.heads, heads, causal, window, str(q_len), str(kv_len))
    if cache is None:
        return _fit_term(gm, term, q_len, kv_len, heads, causal, window)
    if key not in cache:
        cache[key] = _fit_term(gm, term, q_len, kv_len, heads, causal, window)
    return cache[key]


@contextlib.contextmanager
def fit_cache() -> Iterator[None]:
    """Share fits between the sites of one detection pass (the graph does not change during it)."""
    token = _FITS.set({})
    try:
        yield
    finally:
        _FITS.reset(token)


def _fit_term(gm: fx.GraphModule, term: MaskTerm, q_len: Any, kv_len: Any, heads: int, causal: bool,
              window: int | None) -> AlibiFit | str | None:
    reasons: list[str] = []
    for slopes in _candidates(term.node, heads):
        fit = _fit_with(gm, term, slopes, q_len, kv_len, heads, causal, window)
        if isinstance(fit, AlibiFit):
            return fit
        reasons.append(fit)
    return reasons[0] if reasons else None


def _fit_with(gm: fx.GraphModule, term: MaskTerm, slopes: fx.Node, q_len: Any, kv_len: Any, heads: int,
              causal: bool, window: int | None) -> AlibiFit | str:
    if bool(getattr(tensor_meta(slopes), "requires_grad", False)):
        return f"slopes {slopes.name} require grad (the alibi kernels take constant slopes)"
    if not is_shape_only(slopes):
        return f"slopes {slopes.name} depend on graph inputs (their sign cannot be checked)"
    alphas: list[float] = []
    structure: set[tuple[bool, int | None]] = set()
    real: torch.Tensor | None = None
    for point in evaluation_points(term.node, q_len, kv_len):
        try:
            with unset_fake_temporarily(), torch.no_grad():
                if real is None:
                    real = torch.as_tensor(Evaluator(gm, point)(slopes)).double().reshape(-1).cpu()
                nq, nk = (int(hint(x)) if not is_symbolic(x) else Evaluator(gm, point).sym(x) for x in (q_len, kv_len))
                # The graph's tensors live on the model's device (BLOOM builds its alibi with arange(device=...)):
                # the probe goes in there, and the fit runs there too (float64 over heads x 64 rows x Nk per batch:
                # 0.8 s of BLOOM's pass on the host CPU at 4 x 2048, most of the pass).
                device = example(slopes).device
                for seed in _PROBE_SEEDS:
                    g = torch.Generator().manual_seed(seed)
                    probe = (0.5 + torch.rand(heads, generator=g, dtype=torch.float64)) * _PROBE_SIZE
                    evaluator = _ProbeEvaluator(gm, point)
                    evaluator.memo[slopes] = probe.reshape(tuple(int(s) for s in example(slopes).shape)).to(device)
                    value = evaluator(term.node)
                    if not isinstance(value, torch.Tensor):
                        return "the bias is not a tensor"
                    fit = _fit_values(in_site_frame(value.double(), term.heads), probe, nq, nk, causal, window)
                    if isinstance(fit, str):
                        return fit
                    alphas.append(fit[0])
                    structure.add(fit[1:])
        except NotConstant as exc:
            return f"the bias depends on graph inputs beyond its slopes ({exc})"
        except (RuntimeError, ValueError, TypeError) as exc:
            return f"the bias could not be evaluated with probe slopes ({type(exc).__name__}: {exc})"
    alpha = alphas[0]
    if any(abs(a - alpha) > _REL_TOL * abs(alpha) for a in alphas) or len(structure) != 1:
        return "the bias is not the same linear function of the slopes at every size"
    assert real is not None
    kernel_slopes = real * alpha * term.factor
    if not bool(torch.isfinite(kernel_slopes).all()) or bool((kernel_slopes < 0).any()):
        return f"slopes x {alpha * term.factor:g} are not finite and >= 0 ({kernel_slopes.tolist()})"
    term_causal, term_window = structure.pop()
    return AlibiFit(slopes, alpha * term.factor, term_causal, term_window)


def _fit_values(value: torch.Tensor, probe: torch.Tensor, nq: int, nk: int, causal: bool,
                window: int | None) -> tuple[float, bool, int | None] | str:
    """(alpha, term_causal, term_window) when ``value`` is alpha * probe[h] * ALiBi position + row constant.

    Memory stays near the term's own size: batches are fitted one at a time, and a term without a query dim
    (BLOOM's, MPT's (.., 1, Nk)) is checked on _ROWS query rows including the last, whose allowed keys (causal:
    all keys up to Nk - 1) contain every other row's, so a linear fit there holds on every row; a window is then
    not applied to the fit (it would hide the keys between the sampled rows' windows).
    """
    value = value.reshape((1,) * (4 - value.dim()) + tuple(value.shape)) if value.dim() < 4 else value
    heads = probe.numel()
    if value.dim() != 4 or value.shape[1] != heads:
        return f"the bias of shape {tuple(value.shape)} has no head dim of {heads}"
    try:
        torch.broadcast_shapes(value.shape, (value.shape[0], heads, nq, nk))
    except RuntimeError:
        return f"the bias of shape {tuple(value.shape)} does not broadcast to ({heads}, {nq}, {nk})"
    device = value.device
    probe = probe.to(device)
    rows = torch.arange(nq, device=device)
    sampled = value.shape[2] == 1 and nq > _ROWS
    if sampled:
        rows = torch.linspace(0, nq - 1, _ROWS, device=device).round().long().unique()
    patterns = set()
    for b in range(value.shape[0]):
        keep_b = (value[b] > NEG_THRESHOLD).expand(heads, nq, nk)
        patterns.add(pattern_2d(keep_b, nq, nk))
    if len(patterns) != 1 or (pattern_and_window := patterns.pop())[0] is Pattern.GENERIC:
        return "the bias masks keys in a pattern other than causal / sliding window"
    pattern, term_window = pattern_and_window
    term_causal = pattern in (Pattern.CAUSAL, Pattern.WINDOW)
    is_causal = causal or term_causal
    win = min(w for w in (window, term_window) if w is not None) if (window or term_window) else None
    i = rows.double()[:, None] + (nk - nq)
    j = torch.arange(nk, dtype=torch.float64, device=device)[None, :]
    allowed = j <= i if is_causal else torch.ones(rows.numel(), nk, dtype=torch.bool, device=device)
    # With sampled rows a window would leave the keys between the sampled rows' windows unchecked; the term has
    # no query dim, so every row sees the same values and the fit is made on all keys the causal rows allow.
    if win is not None and not sampled:
        allowed = allowed & (j > i - win)
    # causal: -slope * |i + off - j| == slope * j - slope * (i + off) on allowed keys; otherwise only symmetric
    x = j.expand(rows.numel(), nk) if is_causal else -(i - j).abs()

    def centred(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Value and position of batch b, each minus its row mean over the allowed keys (0 elsewhere)."""
        t = value[b].expand(heads, nq, nk)[:, rows]
        keep = allowed & (t > NEG_THRESHOLD)
        count = keep.sum(-1, keepdim=True)
        keep = keep & (count >= 2)
        count = count.clamp(min=1)
        t = torch.where(keep, t, 0.0)
        xs = torch.where(keep, x, 0.0)
        return (torch.where(keep, t - t.sum(-1, keepdim=True) / count, 0.0),
                torch.where(keep, xs - xs.sum(-1, keepdim=True) / count, 0.0))

    num = torch.zeros(heads, dtype=torch.float64, device=device)
    den = torch.zeros(heads, dtype=torch.float64, device=device)
    for b in range(value.shape[0]):
        t_c, x_c = centred(b)
        num += (t_c * x_c).sum(dim=(1, 2))
        den += (x_c * x_c).sum(dim=(1, 2))
    if not bool((den > 0).all()):
        return "no query row sees two keys: the slopes cannot be identified"
    per_head = num / den
    for b in range(value.shape[0]):
        t_c, x_c = centred(b)
        residual = float((t_c - per_head[:, None, None] * x_c).abs().max())
        size = float(t_c.abs().max())
        if not residual <= _REL_TOL * max(size, 1e-30):  # also refuses a NaN residual
            return f"the bias is not slopes x positions (+ a per-row constant): residual {residual:.3g}"
    alphas = per_head / probe
    alpha = float(alphas[0])
    if alpha == 0.0 or float((alphas - alpha).abs().max()) > _REL_TOL * abs(alpha):
        return "the bias does not scale each head by its own slope"
    return alpha, term_causal, term_window
