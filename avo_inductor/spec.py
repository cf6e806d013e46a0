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
from dataclasses import dataclass
from typing import Any

import torch

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
        f = 2.0 * self.batch * self.q_heads * self.attended_pairs() * (self.head_dim + self.v_head_dim)
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

    def short(self) -> str:
        """Compact text for tables: B,H,HKV,Nq,Nk,D dtype mask."""
        mask = "causal" if self.causal else "full"
        if self.window:
            mask += f"/win{self.window}"
        if self.mask is not MaskKind.NONE:
            mask += f"+{self.mask.value}"
        d = f"{self.head_dim}" if self.v_head_dim == self.head_dim else f"{self.head_dim}/{self.v_head_dim}"
        grad = " train" if self.needs_grad else ""
        return f"{self.batch},{self.q_heads},{self.kv_heads},{self.q_len},{self.kv_len},{d} {self.dtype} {mask}{grad}"

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
        return {"vendor": self.vendor, "name": self.name, "capability": list(self.capability), "sm_count": self.sm_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareKey:
        return cls(str(data["vendor"]), str(data["name"]), tuple(int(x) for x in data["capability"]), int(data["sm_count"]))  # type: ignore[arg-type]

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
