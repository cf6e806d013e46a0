"""Replace a matched attention site by one call: ``F.scaled_dot_product_attention`` or ``torch.ops.avo.attention``.

New nodes go right before the site's output (every input of the site precedes it), carry the output's
``nn_module_stack`` / ``stack_trace`` and an ``example_value`` computed in the operands' fake mode, so later passes
and AOTAutograd see a well-formed Dynamo graph. The output node is reused for the final call (its meta is kept);
nodes of the old site that lose their last user are erased.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor

from ..spec import MaskKind
from .empty_rows import mean_where_no_key
from .fx_utils import erase_dead, is_symbolic, require_tensor_meta, sym_expr
from .masks import TermKind
from .match import AttentionMatch

_COPIED_META = ("nn_module_stack", "stack_trace", "source_fn_stack", "seq_nr")


class _Builder:
    """Inserts nodes before ``anchor`` and fills their meta (example value from running the op on fake values)."""

    def __init__(self, gm: fx.GraphModule, anchor: fx.Node) -> None:
        self.gm, self.anchor = gm, anchor

    def __call__(self, op: str, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        with self.gm.graph.inserting_before(self.anchor):
            node = self.gm.graph.create_node(op, target, args, kwargs)
        for key in _COPIED_META:
            if key in self.anchor.meta:
                node.meta[key] = self.anchor.meta[key]
        node.meta["example_value"] = self._fake(op, target, args, kwargs)
        return node

    def _fake(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        real_args, real_kwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta.get("example_value"))
        # The operands' own mode: the backend may run under a tracing context with a different (re-fakified) mode.
        flat: list[Any] = []

        def collect(value: Any) -> Any:
            flat.append(value)
            return value

        fx.node.map_aggregate((real_args, real_kwargs), collect)
        fake_mode = next((a.fake_mode for a in flat if isinstance(a, FakeTensor)), None)
        if fake_mode is None:
            return None
        try:
            with fake_mode:
                if op == "call_method":
                    return getattr(real_args[0], target)(*real_args[1:], **real_kwargs)
                return target(*real_args, **real_kwargs)
        except Exception:  # meta is best effort; the avo op may have no fake impl yet
            return None

    def size(self, node: fx.Node, dim: int) -> Any:
        """A size as an int, or a node computing it when it is symbolic."""
        value = require_tensor_meta(node).shape[dim]
        return self("call_method", "size", node, dim) if is_symbolic(value) else int(value)


def _operands(b: _Builder, match: AttentionMatch) -> tuple[fx.Node, fx.Node, fx.Node]:
    """q, k, v as (B, H, N, D): k transposed back from k^T if needed; 3-D bmm operands get a batch dim of 1."""
    q, k, v = match.q, match.k, match.v
    if match.k_is_transposed:
        k = b("call_method", "transpose", k, -2, -1)
    if match.rank3:
        q, k, v = (b("call_method", "unsqueeze", x, 0) for x in (q, k, v))
    return q, k, v


def _band(b: _Builder, q: fx.Node, k: fx.Node, window: int | None) -> fx.Node:
    """Bottom-right aligned causal (and sliding-window) keep-mask (Nq, Nk): key j for query i iff
    i + Nk - Nq - window < j <= i + Nk - Nq (what the avo kernel computes from its flags)."""
    nq, nk = b.size(q, -2), b.size(k, -2)
    device = require_tensor_meta(q).device
    rows = b("call_function", torch.arange, nq, device=device)
    cols = b("call_function", torch.arange, nk, device=device)
    offset = b("call_function", operator.sub, nk, nq) if isinstance(nk, fx.Node) or isinstance(nq, fx.Node) else nk - nq
    diag = b("call_function", operator.add, b("call_method", "unsqueeze", rows, -1), offset)
    keep = b("call_function", operator.le, cols, diag)
    if window is not None:
        low = b("call_function", operator.sub, diag, window)
        keep = b("call_function", operator.and_, keep, b("call_function", operator.gt, cols, low))
    return keep


# Bias dtypes the avo kernels load as they are (then convert to fp32 in-kernel, like the scores).
KERNEL_BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_bias_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a bias reaches the avo op in: its own when the kernels load it (a float32 bias added to bf16
    scores is float32 math in eager; casting it to bf16 would round 1000.3 to 1000), else float32."""
    return dtype if dtype in KERNEL_BIAS_DTYPES else torch.float32


def _term_masks(b: _Builder, match: AttentionMatch, *, bias_in_q_dtype: bool = True
                ) -> tuple[fx.Node | None, fx.Node | None]:
    """The site's generic mask terms as one keep-mask (the and of its bool terms) and one bias (their sum).

    Bool terms become keep-masks (masked_fill's mask is inverted: SDPA keeps True); bias terms are scaled by the
    scales applied after them and cast to q's dtype (SDPA's fused kernels want it), or with ``bias_in_q_dtype``
    False keep their precision (:func:`kernel_bias_dtype`, the avo op).
    """
    dtype = require_tensor_meta(match.q).dtype
    keeps: list[fx.Node] = []
    biases: list[fx.Node] = []
    for term in match.mask_terms:
        node = _site_frame(b, term.node, term.heads)
        if term.kind is TermKind.BIAS:
            if term.factor != 1.0:
                node = b("call_function", operator.mul, node, term.factor)
            have = require_tensor_meta(node).dtype
            want = dtype if bias_in_q_dtype else kernel_bias_dtype(have)
            if have != want:
                node = b("call_method", "to", node, want)
            if not _unit_key_stride(node):
                node = b("call_method", "contiguous", node)
            biases.append(node)
        else:
            if require_tensor_meta(node).dtype != torch.bool:
                node = b("call_method", "bool", node)
            if term.kind is TermKind.DROP:
                node = b("call_function", torch.logical_not, node)
            keeps.append(node)
    return _fold(b, operator.and_, keeps), _fold(b, operator.add, biases)


def _tensor_mask(b: _Builder, keep: fx.Node | None, bias: fx.Node | None) -> fx.Node | None:
    """One SDPA-style mask: the keep-mask, the bias, or both as ``where(keep, bias, -inf)``."""
    if keep is not None and bias is not None:
        return b("call_function", torch.where, keep, bias, float("-inf"))
    return keep if keep is not None else bias


def _eager_empty_rows(b: _Builder, match: AttentionMatch, out: fx.Node, v: fx.Node, keep: fx.Node | None
                      ) -> fx.Node:
    """``out`` with rows that see no key given eager's mean of v when the site's masks have a finite fill
    (``match.empty_rows_mean``; see ``empty_rows.py``), else ``out`` as it is."""
    if not match.empty_rows_mean:
        return out
    return b("call_function", mean_where_no_key, out, v, keep, bool(match.causal), int(match.window or 0))


def _unit_key_stride(node: fx.Node) -> bool:
    """Whether a bias is laid out with consecutive keys adjacent (last stride 1, or a single key).

    A bias made by permuting an embedding lookup, as T5's relative bias ((Nq, Nk, H) -> (1, H, Nq, Nk)), has a key
    stride of H: SDPA's fused kernels do not take it and a T5 encoder ran 0.60x Inductor on an H100 (every
    site on SDPA's slow path); an avo kernel would read it uncoalesced. One contiguous copy per call (32 MB at
    16 heads x 1024^2 in bf16, ~20 us) makes it a bias every kernel reads at full speed."""
    value = require_tensor_meta(node)
    if value.dim() == 0:
        return True
    size, stride = value.shape[-1], value.stride()[-1]
    return not is_symbolic(stride) and (int(stride) == 1 or (not is_symbolic(size) and int(size) == 1))


def _site_frame(b: _Builder, node: fx.Node, heads: int | None) -> fx.Node:
    """A term added to (B*H, Nq, Nk) scores, reshaped to broadcast against (B, H, Nq, Nk) (masks.in_site_frame)."""
    shape = require_tensor_meta(node).shape
    if heads is None or len(shape) != 3 or (not is_symbolic(shape[0]) and int(shape[0]) == 1):
        return node
    return b("call_method", "reshape", node, -1, heads, b.size(node, 1), b.size(node, 2))


def _alibi_slopes(b: _Builder, match: AttentionMatch) -> fx.Node:
    """The kernel's (Hq,) fp32 slopes from the graph node holding them (computed at run time, not folded)."""
    assert match.mask is not None
    slopes = b("call_method", "to", b("call_method", "reshape", match.mask, -1), torch.float32)
    if match.alibi_scale != 1.0:
        slopes = b("call_function", operator.mul, slopes, float(match.alibi_scale))
    return slopes


def _fold(b: _Builder, op: Any, nodes: list[fx.Node]) -> fx.Node | None:
    out = nodes[0] if nodes else None
    for node in nodes[1:]:
        out = b("call_function", op, out, node)
    return out


def _finish(gm: fx.GraphModule, match: AttentionMatch, b: _Builder, result: fx.Node) -> fx.Node:
    if match.rank3:
        result = b("call_method", "squeeze", result, 0)
    if any(user.op == "call_method" and user.target == "view" for user in match.output.users):
        # SDPA's CPU flash path returns a transposed (B, N, H, D) buffer; the matmul it replaces was contiguous.
        result = b("call_method", "contiguous", result)
    # The site's output node itself becomes the final call: matches of later sites that take this site's output
    # as an input (two stacked attentions) keep pointing at a live node.
    out = match.output
    out.op, out.target = result.op, result.target
    out.args, out.kwargs = result.args, result.kwargs
    gm.graph.erase_node(result)
    erase_dead(gm, [*match.nodes, *(t.node for t in match.mask_terms)])
    gm.graph.lint()
    gm.recompile()
    return out


def rewrite_to_sdpa(gm: fx.GraphModule, match: AttentionMatch) -> fx.Node:
    """Replace the site by ``F.scaled_dot_product_attention`` computing the same values; returns the new node.

    Causal with Nq == Nk becomes ``is_causal=True``; bottom-right causal with Nq != Nk and sliding windows become
    an explicit keep-mask (SDPA's is_causal is top-left aligned). GQA sites pass un-repeated k/v with
    ``enable_gqa=True`` (torch >= 2.5).
    """
    b = _Builder(gm, match.output)
    q, k, v = _operands(b, match)
    same_len = sym_expr(require_tensor_meta(q).shape[-2]) == sym_expr(require_tensor_meta(k).shape[-2])
    is_causal = match.causal and match.window is None and not match.mask_terms and same_len
    band = _band(b, q, k, match.window) if match.causal and not is_causal else None
    keep, bias = _term_masks(b, match)
    mask = _tensor_mask(b, _fold(b, operator.and_, [n for n in (band, keep) if n is not None]), bias)
    kwargs: dict[str, Any] = {"attn_mask": mask, "dropout_p": match.dropout_p, "is_causal": is_causal,
                              "scale": match.scale}
    if match.spec.kv_heads != match.spec.q_heads:
        kwargs["enable_gqa"] = True
    out = b("call_function", F.scaled_dot_product_attention, q, k, v, **kwargs)
    return _finish(gm, match, b, _eager_empty_rows(b, match, out, v, keep))


def rewrite_to_avo(gm: fx.GraphModule, match: AttentionMatch, kernel_id: str) -> fx.Node:
    """Replace the site by ``torch.ops.avo.attention(q, k, v, mask, kernel_id, scale, causal, window, mask_kind)``.

    k/v are passed un-repeated (the kernel does GQA); mask follows CONTRACTS.md: keep-mask for BOOL, (B, Nk) keep
    for PADDING, additive for BIAS (float32/float16/bfloat16 kept as is, whatever q's dtype), (Hq,) fp32 slopes
    for ALIBI. Raises ValueError for
    dropout sites (the op has no dropout argument): the caller falls back to ``rewrite_to_sdpa`` for those.
    """
    if match.dropout_p:
        raise ValueError(f"avo.attention has no dropout; site {match.module_path!r} has dropout_p={match.dropout_p}")
    b = _Builder(gm, match.output)
    q, k, v = _operands(b, match)
    keep: fx.Node | None = None
    if match.mask_kind is MaskKind.ALIBI:
        mask: fx.Node | None = _alibi_slopes(b, match)
    else:
        keep, bias = _term_masks(b, match, bias_in_q_dtype=False)  # the kernels read a bias in its own precision
        mask = _tensor_mask(b, keep, bias)
    if mask is not None and match.mask_kind is MaskKind.PADDING:
        mask = b("call_method", "flatten", mask, 1)
    out = b("call_function", torch.ops.avo.attention.default, q, k, v, mask, kernel_id, float(match.scale),
            bool(match.causal), int(match.window or 0), match.mask_kind.value)
    return _finish(gm, match, b, _eager_empty_rows(b, match, out, v, keep))
