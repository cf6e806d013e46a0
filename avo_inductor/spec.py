"""Keys: what an attention site is (AttentionSpec), where it runs (HardwareKey) and with what (SoftwareKey).

A spec holds everything that changes a kernel's code or its best tiling. Sequence lengths and batch are
bucketed to powers of two for the cache key, so dynamic shapes share kernels; the exact values stay in the
spec for reports. Data flows one way: detect -> spec -> cache -> kernels.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from .parsing import bounded_int, finite_float

DTYPES = ("float16", "bfloat16", "float32")


class MaskKind(str, enum.Enum):
    """Tensor-valued part of the mask, combined with the ``causal``/``window`` flags of the spec.

    NONE: no tensor mask. BIAS: additive float tensor broadcastable to (B, H, Nq, Nk).
    BOOL: boolean keep-mask broadcastable to (B, H, Nq, Nk) (True = attend), as SDPA takes it.
    PADDING: key padding, a (B, Nk) boolean keep-mask. ALIBI: per-head slopes (H,), bias = -slope * |i - j|.
    """

    NONE = "none"
    BIAS = "bias"
    BOOL = "bool"
    PADDING = "padding"
    ALIBI = "alibi"


def next_power_of_two(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), minimum)
    return 1 << (n - 1).bit_length()


def seq_bucket(n: int) -> int:
    """Sequence-length bucket: 1..16 stay exact (decode kernels care), larger lengths round up to powers of two."""
    n = int(n)
    if n <= 16:
        return max(n, 1)
    return next_power_of_two(n)


@dataclass(frozen=True)
class AttentionSpec:
    """One attention site's shape and semantics.

    Tensors are (batch, heads, seq, head_dim) as SDPA takes them: q (B, Hq, Nq, D), k (B, Hkv, Nk, D),
    v (B, Hkv, Nk, Dv). ``scale`` None means 1/sqrt(D). ``window`` is the sliding-window size in keys
    (a query at i attends keys in (i - window, i], bottom-right aligned like SDPA's causal), None = unbounded.
    ``dynamic`` names the dims that were symbolic when the site was traced (e.g. ("q_len", "kv_len")).
    """

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_head_dim: int | None = None
    dtype: str = "bfloat16"
    scale: float | None = None
    causal: bool = False
    window: int | None = None
    mask: MaskKind = MaskKind.NONE
    dropout_p: float = 0.0
    needs_grad: bool = False
    dynamic: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.mask, str) and not isinstance(self.mask, MaskKind):
            object.__setattr__(self, "mask", MaskKind(self.mask))
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        object.__setattr__(self, "dynamic", tuple(self.dynamic))
        for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "v_head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentionSpec.{name} must be a positive int; got {value!r}")
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads ({self.q_heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.dtype not in DTYPES:
            raise ValueError(f"AttentionSpec.dtype must be one of {DTYPES}; got {self.dtype!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"AttentionSpec.window must be >= 1 or None; got {self.window}")
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"AttentionSpec.dropout_p must be in [0, 1); got {self.dropout_p}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"AttentionSpec.scale must be a positive finite float or None; got {self.scale}")

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def value_dim(self) -> int:
        """``v_head_dim`` typed as the int it always is after ``__post_init__`` (the field admits None only as the
        constructor's "same as head_dim")."""
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def is_decode(self) -> bool:
        return self.q_len <= 16

    @property
    def gqa_group(self) -> int:
        return self.q_heads // self.kv_heads

    def attended_pairs(self) -> int:
        """Number of (query, key) pairs the causal / window structure allows (tensor masks not counted)."""
        if not self.causal and self.window is None:
            return self.q_len * self.kv_len
        off, total = self.kv_len - self.q_len, 0
        for i in range(self.q_len):
            hi = min(self.kv_len - 1, i + off)
            lo = max(0, i + off - self.window + 1) if self.window else 0
            total += max(0, hi - lo + 1)
        return total

    def flops(self, backward: bool = False) -> float:
        """Analytic FLOPs of useful work (2 matmuls over attended pairs; causal ~halves them, as FA counts).

        ``backward``: forward + backward, the backward counted 2.5x the forward (the convention in ANCHORS.md).
        """
        f = 2.0 * self.batch * self.q_heads * self.attended_pairs() * (self.head_dim + self.value_dim)
        return f * (3.5 if backward else 1.0)

    def bucketed(self) -> AttentionSpec:
        """The spec with batch and lengths rounded to their buckets (what the cache key is made of)."""
        return dataclasses.replace(
            self,
            batch=next_power_of_two(self.batch, minimum=1),
            q_len=seq_bucket(self.q_len),
            kv_len=seq_bucket(self.kv_len),
            dynamic=(),
        )

    def cache_key(self) -> str:
        """Stable, human-readable key of the bucketed spec (scale rounded to 6 significant digits)."""
        b = self.bucketed()
        scale = "auto" if self.scale is None or math.isclose(self.scale, 1 / math.sqrt(self.head_dim), rel_tol=1e-6) \
            else f"{self.scale:.6g}"
        parts = [
            f"b{b.batch}", f"h{b.q_heads}", f"kv{b.kv_heads}", f"q{b.q_len}", f"k{b.kv_len}",
            f"d{b.head_dim}", f"dv{b.v_head_dim}", b.dtype, f"s{scale}",
            "causal" if b.causal else "full", f"w{b.window or 0}", b.mask.value,
            f"p{b.dropout_p:g}", "train" if b.needs_grad else "infer",
        ]
        return "-".join(parts)

    def to_text(self) -> str:
        """The one spec text form (see :func:`spec_text`); ``AttentionSpec.from_text`` reads it back."""
        return spec_text(self)

    def short(self) -> str:
        """What tables, reports and store listings print: the spec text form, so a printed spec can be pasted back."""
        return spec_text(self)

    @classmethod
    def from_text(cls, text: str, *, dtype: str | None = None, needs_grad: bool = False) -> AttentionSpec:
        """Parse the spec text form (see :func:`parse_spec_text`)."""
        return parse_spec_text(text, dtype=dtype, needs_grad=needs_grad)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mask"] = self.mask.value
        out["dynamic"] = list(self.dynamic)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AttentionSpec field(s) {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class HardwareKey:
    """The device a kernel was tuned on. On CPU (Triton interpreter) vendor is "cpu"."""

    vendor: str
    name: str
    capability: tuple[int, int]
    sm_count: int

    @property
    def slug(self) -> str:
        """Filesystem-safe id, e.g. ``nvidia-h100-80gb-hbm3-sm90-132``."""
        raw = f"{self.vendor}-{self.name}-sm{self.capability[0]}{self.capability[1]}-{self.sm_count}".lower()
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-")

    def to_dict(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "name": self.name, "capability": list(self.capability),
                "sm_count": self.sm_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareKey:
        return cls(str(data["vendor"]), str(data["name"]),
                   tuple(int(x) for x in data["capability"]), int(data["sm_count"]))  # type: ignore[arg-type]

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> HardwareKey:
        """The key of ``device`` (default: the current CUDA device if any, else the CPU interpreter)."""
        dev = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
            return cls(vendor, props.name, (props.major, props.minor), props.multi_processor_count)
        return cls("cpu", "triton-interpreter", (0, 0), 0)


@dataclass(frozen=True)
class SoftwareKey:
    """Versions a kernel was compiled and verified with; a record from other versions is re-verified."""

    triton: str
    torch: str

    def to_dict(self) -> dict[str, Any]:
        return {"triton": self.triton, "torch": self.torch}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SoftwareKey:
        return cls(str(data["triton"]), str(data["torch"]))

    @classmethod
    def current(cls) -> SoftwareKey:
        import triton

        return cls(triton.__version__, torch.__version__.split("+")[0])


def store_key(spec: AttentionSpec, hardware: HardwareKey) -> str:
    """The KernelStore key: hardware slug + bucketed spec key."""
    return f"{hardware.slug}/{spec.cache_key()}"


def kernel_id(sha256: str, entry_point: str, bwd_entry_point: str | None, launch: dict[str, Any]) -> str:
    """Short content id of a kernel: changes whenever its source, entry points or launch config change.

    The one formula shared by KernelRecord.kernel_id and the loader, so a record and its raw source get one id.
    """
    return stable_hash({"sha": sha256, "launch": launch, "entry": entry_point, "bwd": bwd_entry_point})[:16]


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (dicts sorted), for ids and manifests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- the spec text form -------------------------------------------------------------------------------------
# One text form for every place a person reads or types a spec: the cache and search CLIs, the benchmarks, store
# listings, reports. Canonical (what spec_text prints):
#     B,H,HKV,NQ,NK,D[,DV] DTYPE (causal|full)[/winW][+MASK] [train] [dropout=P] [scale=S] [dynamic=DIM,...]
# e.g. "2,32,8,1000,1000,128 bfloat16 causal/win256+padding train". DV is printed only when it differs from D,
# dropout/scale/dynamic only when not their defaults; scale is printed with repr() so the float reads back exactly.
# The parser also takes, as aliases:
#   - five dimensions B,H,HKV,N,D (NQ = NK = N);
#   - the benchmarks' comma rows, words after the numbers: "4,32,8,4096,128,causal", "...,window1024,train";
#   - words in any order, joined by spaces, "+" or "/"; "none" for no tensor mask; "infer" for not train;
#   - dtype short names fp16/half, bf16, fp32/float; "winW", "windowW", "win=W", "window=W", "p=P", "D/DV".
# A window implies the causal upper bound (keys in (i - W, i]), and the detector always pairs it with causal, so
# a window word makes the spec causal unless "full" is given ("full/win256" is the non-causal-flag form).
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
SPEC_TEXT_HELP = ('"B,H,HKV,NQ,NK,D[,DV] [dtype] [causal|full][/winW][+bias|bool|padding|alibi] [train] '
                  '[dropout=P] [scale=S] [dynamic=q_len,...]", e.g. "2,32,8,1000,1000,128 bf16 causal/win256"')
MAX_SPEC_TEXT = 400  # far above any real spec; refuses pasted garbage before any work is done on it
_DIM_NAMES = ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "v_head_dim")
_DYNAMIC_DIMS = ("batch", "q_len", "kv_len")
_WINDOW = re.compile(r"win(?:dow)?=?(\d+)")


def spec_text(spec: AttentionSpec) -> str:
    """``spec`` in the canonical text form (module comment above); ``parse_spec_text`` inverts it exactly."""
    dims = [spec.batch, spec.q_heads, spec.kv_heads, spec.q_len, spec.kv_len, spec.head_dim]
    if spec.value_dim != spec.head_dim:
        dims.append(spec.value_dim)
    mask = "causal" if spec.causal else "full"
    if spec.window is not None:
        mask += f"/win{spec.window}"
    if spec.mask is not MaskKind.NONE:
        mask += f"+{spec.mask.value}"
    words = [",".join(map(str, dims)), spec.dtype, mask]
    if spec.needs_grad:
        words.append("train")
    if spec.dropout_p:
        words.append(f"dropout={spec.dropout_p!r}")
    if spec.scale is not None:
        words.append(f"scale={spec.scale!r}")
    if spec.dynamic:
        words.append("dynamic=" + ",".join(spec.dynamic))
    return " ".join(words)


def parse_spec_text(text: str, *, dtype: str | None = None, needs_grad: bool = False) -> AttentionSpec:
    """An AttentionSpec from its text form (canonical or an alias, see the module comment above).

    ``dtype`` and ``needs_grad`` are defaults for text that does not say (a CLI's ``--dtype`` / ``--train``); a
    dtype in the text wins, "train" in the text sets needs_grad. Raises ValueError naming the offending token.
    """
    if not isinstance(text, str):
        raise TypeError(f"spec text must be a string; got {type(text).__name__}")
    if len(text) > MAX_SPEC_TEXT:
        raise ValueError(f"spec text is longer than {MAX_SPEC_TEXT} characters: {text[:40]!r}...")
    tokens = text.split()
    if not tokens:
        raise ValueError(f"empty spec; expected {SPEC_TEXT_HELP}")
    parts = tokens[0].split(",")
    n_dims = next((i for i, p in enumerate(parts) if not p.strip().lstrip("-").replace("/", "").isdigit()), len(parts))
    dims, trailing = parts[:n_dims], parts[n_dims:]
    for part in trailing:  # benchmark rows: words may follow the numbers, but no number may follow a word
        if part.strip().lstrip("-").isdigit():
            raise ValueError(f"spec dimensions must be integers; got {parts[n_dims]!r} in {tokens[0]!r}; "
                             f"expected {SPEC_TEXT_HELP}")
    fields: dict[str, Any] = _parse_dims(dims, tokens[0])
    words = [w for token in trailing + tokens[1:] for w in re.split(r"[+/]", token) if w]
    seen: dict[str, str] = {}
    for word in words:
        _apply_word(word, fields, seen, text)
    fields.setdefault("dtype", dtype if dtype is not None else "bfloat16")
    fields["dtype"] = DTYPE_ALIASES.get(fields["dtype"], fields["dtype"])
    fields.setdefault("needs_grad", needs_grad)
    if fields.get("window") is not None:
        fields.setdefault("causal", True)
    try:
        return AttentionSpec(**fields)
    except ValueError as exc:
        raise ValueError(f"spec {text!r}: {exc}") from None


def _parse_dims(dims: list[str], token: str) -> dict[str, Any]:
    """B,H,HKV,N,D / B,H,HKV,NQ,NK,D / B,H,HKV,NQ,NK,D,DV, or D/DV as the last dimension."""
    if dims and "/" in dims[-1]:
        head, _, v_head = dims[-1].partition("/")
        dims = [*dims[:-1], head, v_head]
        if len(dims) != 7:
            raise ValueError(f"spec dimensions {token!r}: D/DV needs B,H,HKV,NQ,NK before it; "
                             f"expected {SPEC_TEXT_HELP}")
    dims = list(dims)
    if len(dims) not in (5, 6, 7):
        raise ValueError(f"spec needs 5, 6 or 7 dimensions, got {len(dims)} in {token!r}; expected {SPEC_TEXT_HELP}")
    if len(dims) == 5:
        dims.insert(3, dims[3])  # B,H,HKV,N,D: NQ = NK = N
    # strict=False: six dims leave v_head_dim out (the last of _DIM_NAMES), and the spec defaults it
    return {name: bounded_int(f"spec {name}", d, minimum=1) for name, d in zip(_DIM_NAMES, dims, strict=False)}


def _apply_word(word: str, fields: dict[str, Any], seen: dict[str, str], text: str) -> None:
    """Set the field ``word`` names; a second word for a field already set raises (e.g. "causal+full")."""
    lowered = word.lower()
    key, eq, value = lowered.partition("=")
    field: str
    setting: Any
    if lowered in DTYPES or lowered in DTYPE_ALIASES:
        field, setting = "dtype", DTYPE_ALIASES.get(lowered, lowered)
    elif lowered in ("causal", "full"):
        field, setting = "causal", lowered == "causal"
    elif lowered in ("train", "infer"):
        field, setting = "needs_grad", lowered == "train"
    elif lowered in {k.value for k in MaskKind}:
        field, setting = "mask", MaskKind(lowered)
    elif m := _WINDOW.fullmatch(lowered):
        field, setting = "window", bounded_int(f"window in {word!r}", m.group(1), minimum=1)
    elif eq and key in ("dropout", "p"):
        field, setting = "dropout_p", finite_float(f"dropout in {word!r}", value, minimum=0.0)
    elif eq and key == "scale":
        field, setting = "scale", finite_float(f"scale in {word!r}", value)
    elif eq and key == "dynamic":
        names = tuple(n for n in word.partition("=")[2].split(",") if n)
        bad = [n for n in names if n not in _DYNAMIC_DIMS]
        if bad:
            raise ValueError(f"unknown dynamic dim {bad[0]!r} in {text!r}; expected some of {_DYNAMIC_DIMS}")
        field, setting = "dynamic", names
    else:
        raise ValueError(f"unknown spec word {word!r} in {text!r}; expected {SPEC_TEXT_HELP}")
    if field in seen and fields.get(field) != setting:
        raise ValueError(f"spec word {word!r} contradicts {seen[field]!r} in {text!r}")
    seen[field] = word
    fields[field] = setting
