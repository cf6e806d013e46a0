"""``attn_implementation="avo"`` for transformers models: store kernels without torch.compile.

``import avo_inductor.integrations.transformers`` (or its idempotent :func:`register`) registers an attention
function with transformers' ``AttentionInterface`` and SDPA's mask builder with ``AttentionMaskInterface``, so
``AutoModel.from_pretrained(..., attn_implementation="avo")`` calls :func:`avo_attention_forward` in every layer.
What a compile would do for an SDPA site, per call: the same lookup (``kernel_for(source="store")``, the graph
pass's own lookup and first-use verification), the same fallback (transformers' SDPA attention, the spec queued as a
pending shape, ``AVO_ON_MISS`` honoured: ``error`` raises AvoMissError, ``search`` starts the background search),
and the decision reported like a compiled site (:func:`decisions`, AVO_LOG / TORCH_LOGS=avo lines, TORCH_TRACE).
Decisions are cached per shape bucket, so a call costs a dict lookup and the kernel launch; the mask analysis
(``masks.py``) runs once per mask tensor. Under torch.compile the function defers to SDPA, which the avo graph
pass then handles like any SDPA site.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..backend import logs
from ..backend import report as rep
from ..backend.api import KernelNotFound, kernel_for
from ..backend.explain import ExplainReport
from ..backend.graph_pass import AvoMissError, shared_store, start_background_search
from ..detect.empty_rows import mean_where_no_key
from ..settings import Settings, get_settings, triton_interpreting
from ..spec import DTYPES, AttentionSpec, HardwareKey
from .masks import MaskPlan, MaskPlanCache, plan_mask

try:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface
except ImportError as exc:  # transformers is an optional dependency
    raise ImportError(f"avo_inductor.integrations.transformers needs transformers>=5 ({exc})") from exc

ATTN_NAME = "avo"
PATTERN = "transformers"  # SiteReport.pattern of the decisions made here
MAX_CALL_KEYS = 4096  # exact call shapes remembered (a decode loop adds one per generated length)


@dataclass(frozen=True)
class Decision:
    """What calls of one shape bucket run: ``kernel_id`` (an avo kernel) or None (SDPA), and the report row."""

    site: rep.SiteReport
    kernel_id: str | None = None


_by_bucket: dict[tuple[Any, ...], Decision] = {}


class _CallDecisions:
    """Decisions by exact call shape (the per-call fast path), valid for one Settings object: configure() or a
    reset of the settings starts afresh."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.table: dict[tuple[Any, ...], Decision] = {}

    def get(self, settings: Settings, key: tuple[Any, ...]) -> Decision | None:
        return self.table.get(key) if settings is self.settings else None

    def put(self, settings: Settings, key: tuple[Any, ...], decision: Decision) -> None:
        if settings is not self.settings or len(self.table) >= MAX_CALL_KEYS:
            self.settings, self.table = settings, {}
        self.table[key] = decision

    def clear(self) -> None:
        self.settings, self.table = None, {}


_by_call = _CallDecisions()
_unavailable_sites: dict[str, rep.SiteReport] = {}
_mask_plans = MaskPlanCache()
_warned: set[str] = set()


def register(name: str = ATTN_NAME) -> None:
    """Make ``attn_implementation=name`` run :func:`avo_attention_forward`, with SDPA's masks; idempotent."""
    AttentionInterface.register(name, avo_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)


def decisions() -> list[rep.SiteReport]:
    """One row per shape bucket decided in this process (hit / miss / why SDPA), in the order first seen."""
    return [d.site for d in _by_bucket.values()] + list(_unavailable_sites.values())


def report() -> ExplainReport:
    """:func:`decisions` as the report ``explain()`` returns (``.print()`` shows the same table)."""
    return ExplainReport(decisions())


def reset() -> None:
    """Forget every decision (after a store change: a new record is looked up again at the next call)."""
    _by_bucket.clear()
    _by_call.clear()
    _unavailable_sites.clear()
    _mask_plans.clear()


def avo_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D|Dv) un-repeated for GQA,
    ``attention_mask`` None or 4-D (bool keep-mask or additive); returns ((B, Nq, Hq, Dv) contiguous, None)."""
    def fallback() -> tuple[torch.Tensor, None]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)

    if kwargs.get("s_aux") is not None:
        raise ValueError("attn_implementation='avo' does not support attention sinks (s_aux); use 'eager'")
    if torch.compiler.is_compiling() or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        return fallback()  # SDPA's own handling (a compile's avo pass takes it from there)
    settings = get_settings()
    try:
        call = _prepare(module, query, key, value, attention_mask, dropout, scaling, is_causal, settings)
    except AvoMissError:
        raise
    except Exception as exc:  # like the graph pass: never break the user's model, warn once, count
        if settings.strict:
            raise
        _count("error")
        _warn_once(f"{type(exc).__name__}:{exc}", f"avo: transformers attention fell back to SDPA after an internal "
                   f"error: {type(exc).__name__}: {exc}")
        return fallback()
    if call is None:
        return fallback()
    kernel_id, plan, scale, q, k, v = call
    out = torch.ops.avo.attention(q, k, v, plan.tensor, kernel_id, scale, plan.causal, plan.window or 0,
                                  plan.kind.value)
    if plan.empty_rows_mean:
        out = mean_where_no_key(out, v, plan.keep_4d(), plan.causal, plan.window or 0)
    return out.transpose(1, 2).contiguous(), None


def _prepare(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             mask: torch.Tensor | None, dropout: float, scaling: float | None, is_causal: bool | None,
             settings: Settings) -> tuple[str, MaskPlan, float, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The kernel, mask plan, scale and operands for this call, or None for SDPA. Mirrors transformers' SDPA
    attention: its is_causal rule, and its crop of k/v to Nq for a causal prefill into a longer static cache."""
    q_len, head_dim = query.shape[2], query.shape[3]
    causal = bool(q_len > 1 and mask is None and (is_causal if is_causal is not None
                                                   else getattr(module, "is_causal", True)))
    if causal and key.shape[2] > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    batch, kv_len = query.shape[0], key.shape[2]
    if mask is None:
        plan = plan_mask(None, is_causal=causal, batch=batch, q_len=q_len, kv_len=kv_len)
    else:
        m = mask
        plan = _mask_plans.get(m, (batch, q_len, kv_len, query.dtype),
                               lambda: plan_mask(m, is_causal=False, batch=batch, q_len=q_len, kv_len=kv_len,
                                                 score_dtype=query.dtype))
    if plan.reason:
        _note_unavailable(module, f"mask: {plan.reason}", settings)
        return None
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    call_key = (query.shape, key.shape, value.shape, query.dtype, key.dtype, value.dtype, query.device, scaling,
                dropout > 0, plan.causal, plan.window, plan.kind, needs_grad)
    decision = _by_call.get(settings, call_key)
    if decision is None:
        decision = _decide_call(module, query, key, value, dropout, scaling, plan, needs_grad, settings)
        _by_call.put(settings, call_key, decision)
    if decision.kernel_id is None:
        if decision.site.status == "miss" and settings.on_miss == "error":
            raise AvoMissError(f"AVO_ON_MISS=error and attention {decision.site.summary()} has no tuned kernel. Tune "
                               f"it with `python -m avo_inductor.search run --pending` or import a bundle.")
        return None
    scale = scaling if scaling is not None else 1.0 / math.sqrt(head_dim)
    return decision.kernel_id, plan, float(scale), query, key, value


def _decide_call(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 dropout: float, scaling: float | None, plan: MaskPlan, needs_grad: bool,
                 settings: Settings) -> Decision:
    """The decision for a call shape not seen yet: why no avo kernel can run it, else the spec's bucket decision."""
    unavailable = _unavailable(query, key, value, dropout)
    if unavailable:
        return Decision(_note_unavailable(module, unavailable, settings))
    head_dim = query.shape[3]
    spec = AttentionSpec(query.shape[0], query.shape[1], key.shape[1], query.shape[2], key.shape[2], head_dim,
                         value.shape[3], dtype=str(query.dtype).removeprefix("torch."),
                         scale=_spec_scale(scaling, head_dim), causal=plan.causal, window=plan.window, mask=plan.kind,
                         needs_grad=needs_grad)
    return _by_bucket.get(_bucket_key(settings, query.device, spec)) or _decide(module, spec, query.device, settings)


def _unavailable(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> str:
    """Why no avo kernel can run this call at all ("" = one can): the graph pass's avo_unavailable_reason, on
    tensors."""
    device = query.device
    if device.type == "cpu" and not triton_interpreting():
        return "CPU tensors need TRITON_INTERPRET=1 for Triton kernels"
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type} not supported by avo kernels"
    if dropout > 0:
        return f"dropout p={dropout} is not fused by avo kernels"
    dtype = str(query.dtype).removeprefix("torch.")
    if dtype not in DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtypes {query.dtype}/{key.dtype}/{value.dtype} (avo kernels take one of {DTYPES})"
    if query.shape[1] % key.shape[1]:
        return f"{query.shape[1]} query heads over {key.shape[1]} kv heads"
    return ""


def _spec_scale(scaling: float | None, head_dim: int) -> float | None:
    """None for the default 1/sqrt(D), as the detector writes it (so both paths key the same record)."""
    if scaling is None or math.isclose(scaling, 1 / math.sqrt(head_dim), rel_tol=1e-6):
        return None
    return float(scaling)


def _bucket_key(settings: Settings, device: torch.device, spec: AttentionSpec) -> tuple[Any, ...]:
    return settings, str(device), spec.bucketed()


def _decide(module: torch.nn.Module, spec: AttentionSpec, device: torch.device, settings: Settings) -> Decision:
    """Look the spec up like a compile would; on a miss queue it and apply AVO_ON_MISS. Emitted once per bucket."""
    hardware = HardwareKey.current(device)
    try:
        handle = kernel_for(spec, source="store", hardware=hardware, device=device, store=shared_store(settings))
    except KernelNotFound as exc:
        return _miss(module, spec, device, hardware, str(exc).removeprefix("kernel_for: "), settings)
    from ..kernels.tiers import stale_note  # a template record measured on another template version

    notes = [stale_note(handle.record) or ""]
    if handle.tuned_at is not None:  # a neighbour's kernel, as the graph pass reports it; the shape is worth tuning
        notes.insert(0, rep.class_hit_note(handle.record.metrics))
        shared_store(settings).enqueue_pending(spec, hardware, _origin(module))
        _count("class_hit")
    site = _site(module, spec, rep.AVO, status="hit", kernel_id=handle.kernel_id, layer=handle.layer,
                 speedup=handle.record.metrics.speedup, tuned_at=handle.tuned_at,
                 reason="; ".join(n for n in notes if n))
    decision = Decision(site, handle.kernel_id)
    _by_bucket[_bucket_key(settings, device, spec)] = decision
    _count("hit")
    logs.emit_sites([site], settings, in_compile=False)
    return decision


def _miss(module: torch.nn.Module, spec: AttentionSpec, device: torch.device, hardware: HardwareKey, reason: str,
          settings: Settings) -> Decision:
    """A compile-time miss's consequences: SDPA, the spec queued, AVO_ON_MISS=search starts the search (``error``
    is raised by every call of the bucket, in ``_prepare``)."""
    decision = Decision(_site(module, spec, rep.KEPT, status="miss", reason=f"{reason}; queued"))
    _by_bucket[_bucket_key(settings, device, spec)] = decision
    _count("miss")
    shared_store(settings).enqueue_pending(spec, hardware, _origin(module))
    logs.emit_sites([decision.site], settings, in_compile=False)
    if settings.on_miss == "search":
        start_background_search(settings)
    return decision


def _note_unavailable(module: torch.nn.Module, reason: str, settings: Settings) -> rep.SiteReport:
    """Record (and emit) once per reason why calls run SDPA without a lookup."""
    if reason not in _unavailable_sites:
        site = _site(module, None, rep.KEPT, reason=reason)
        _unavailable_sites[reason] = site
        logs.emit_sites([site], settings, in_compile=False)
    return _unavailable_sites[reason]


def _site(module: torch.nn.Module, spec: AttentionSpec | None, action: str, **fields: Any) -> rep.SiteReport:
    return rep.SiteReport(module_path=type(module).__qualname__, pattern=PATTERN, action=action, spec=spec, **fields)


def _origin(module: torch.nn.Module) -> str:
    """The pending queue's "from which model": the transformers model type, else the attention class."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    return f"transformers:{model_type or type(module).__qualname__}"


def _count(name: str) -> None:
    from torch._dynamo.utils import counters

    counters["avo"][f"transformers_{name}"] += 1


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


register()
