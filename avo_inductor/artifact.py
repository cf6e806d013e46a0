"""The typed currency below everything that uses it: the knob table, LaunchConfig, KernelSource, KernelRecord.

One knob = one ``Knob`` entry in ``KNOBS`` (plus the template code that reads its constant): the genome's fields
and validation, ``GENOME_SPACE``, the rendered GENOME-CONSTANTS block, the launch dict, ``LaunchConfig`` and its key
map, and the search's per-spec pruning are all derived from it. No torch import: records, manifests and search
databases are parsed by processes that never run a kernel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .parsing import MAX_INT, bounded_int, finite_float
from .spec import AttentionSpec, HardwareKey, SoftwareKey, kernel_id, stable_hash

Direction = Literal["fwd", "bwd", "both"]
# What flash_ws90 (the Gluon Hopper forward) does with a knob: "same" as flash_v1; "bwd" acts only through the
# flash_v1 backward it keeps; "ignored" has no effect there; "refused" must keep its default (render refuses).
Ws90Role = Literal["same", "bwd", "ignored", "refused"]
# Per-spec pruning rules of search/operators.spec_space (logic there, one name per knob here).
PRUNE_RULES = ("q_tile", "q_tile_bwd", "kv_tile", "decode_splits", "decode", "causal", "alibi", "gqa", "hopper",
               "fused_bwd")

_TILES = (16, 32, 64, 128, 256)
_WARPS = (1, 2, 4, 8, 16)
_BOOL = (False, True)


@dataclass(frozen=True)
class Knob:
    """One genome knob and everywhere it acts.

    values: the search space; accepted: what validation admits (a superset, default ``values``); constant: its
    module constant in the rendered template (``USE_TMA = tl.constexpr(...)``), None when the template never reads
    it; launch_key: its key in a record's ``launch`` dict (LaunchConfig's field is the key lower-cased), None when
    the launcher never reads it. A record written before a knob existed lacks its launch key: ``default`` must be
    the behaviour such records had. prune: a rule name of PRUNE_RULES. ws90_values: the values flash_ws90 renders.
    """

    name: str
    values: tuple[Any, ...]
    default: Any
    doc: str
    accepted: tuple[Any, ...] = ()
    constant: str | None = None
    launch_key: str | None = None
    direction: Direction = "fwd"
    prune: str | None = None
    ws90: Ws90Role = "same"
    ws90_values: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in _NON_KNOB_FIELDS:
            raise ValueError(f"knob name must be an identifier other than {_NON_KNOB_FIELDS}; got {self.name!r}")
        if not self.accepted:
            object.__setattr__(self, "accepted", self.values)
        if self.default not in self.accepted or not set(self.values) <= set(self.accepted):
            raise ValueError(f"knob {self.name}: default {self.default!r} and values {self.values} must be accepted "
                             f"({self.accepted})")
        if self.prune is not None and self.prune not in PRUNE_RULES:
            raise ValueError(f"knob {self.name}: unknown prune rule {self.prune!r}; known {PRUNE_RULES}")

    @property
    def is_bool(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def launch_field(self) -> str | None:
        return self.launch_key.lower() if self.launch_key else None

    def check(self, owner: str, value: Any) -> Any:
        """``value`` if it is one this knob accepts (bools for bool knobs, ints that are not bools otherwise)."""
        if self.is_bool != isinstance(value, bool) or not isinstance(value, int) or value not in self.accepted:
            shown = f"{self.accepted[:8]}…" if len(self.accepted) > 8 else self.accepted
            raise ValueError(f"{owner}.{self.name} must be one of {shown}; got {value!r}")
        return value


_NON_KNOB_FIELDS = ("template", "grid", "bwd_grid")

KNOBS: tuple[Knob, ...] = (
    Knob("block_m", _TILES, 64, "query tile rows", launch_key="BLOCK_M", prune="q_tile", ws90_values=(64,)),
    Knob("block_n", (16, 32, 64, 128), 64, "key tile columns", accepted=_TILES, launch_key="BLOCK_N",
         prune="kv_tile", ws90_values=(64, 128)),
    Knob("num_warps", (2, 4, 8), 4, "warps per forward program", accepted=_WARPS, launch_key="num_warps",
         ws90_values=(4,)),
    Knob("num_stages", (1, 2, 3, 4, 5), 2, "software-pipelining stages of the forward key loop",
         accepted=tuple(range(1, 9)), launch_key="num_stages", ws90_values=(2, 3, 4)),
    Knob("exp2", _BOOL, True, "softmax in base 2 with log2(e) folded into the scale", constant="USE_EXP2",
         direction="both", ws90="bwd"),
    Knob("causal_split", _BOOL, True, "causal loop split into unmasked full blocks + masked diagonal blocks",
         constant="CAUSAL_SPLIT", direction="both", prune="causal", ws90="bwd"),
    Knob("even_fast_path", _BOOL, True, "drop boundary masks when the lengths divide the tiles",
         launch_key="even_fast_path", direction="both", ws90="ignored"),
    Knob("persistent", _BOOL, False, "one program per SM looping over tiles (grid rule persistent)",
         constant="PERSISTENT"),
    Knob("use_tma", _BOOL, False, "the forward reads K/V tiles through device-side tensor descriptors (Hopper's "
         "TMA copy engine; the launcher makes K/V rows 16-byte aligned)", constant="USE_TMA", launch_key="tma",
         prune="hopper", ws90="refused"),
    Knob("warp_specialize", _BOOL, False, "Triton's automatic warp specialization of the key loop: producer warps load "
         "K/V while consumer warps compute (Hopper+)",
         constant="WARP_SPECIALIZE", prune="hopper", ws90="refused"),
    Knob("lazy_rescale", _BOOL, False, "rescale the accumulator only when the running max grows past a threshold",
         constant="LAZY_RESCALE", ws90="refused"),
    Knob("kv_splits", (1, 2, 4, 8, 16, 32, 64), 1,
         "split the keys across programs (decode, q_len <= 16), combined by a second kernel "
         "(or, with split_combine, in the same launch)",
         accepted=tuple(1 << i for i in range(11)), launch_key="kv_splits", prune="decode_splits", ws90="refused"),
    Knob("split_combine", _BOOL, False, "with kv_splits > 1, the last split program of each query tile to finish "
         "combines the tile's partials (an atomic ticket per tile, counters zeroed by the launcher), so the call is "
         "one launch instead of a forward and a reduce kernel; no effect without kv_splits > 1",
         constant="SPLIT_COMBINE", launch_key="split_combine", prune="decode", ws90="refused"),
    Knob("pack_gqa", _BOOL, False, "the GROUP q heads sharing a kv head share one program, packed into its query "
         "tile rows (row r = position r // GROUP, head-in-group r % GROUP), so each K/V block is read once per group "
         "(FlashAttention-3's PackGQA; decode's win)", constant="PACK_GQA", launch_key="pack_gqa", prune="gqa",
         ws90="refused"),
    Knob("heavy_first", _BOOL, False, "causal forward and dq kernels visit query tiles in reverse, so the tiles with "
         "the most key blocks start first and the last wave holds light ones (FlashAttention-2's scheduling)",
         constant="HEAVY_FIRST", direction="both", prune="causal"),
    Knob("overlap_qk", _BOOL, False, "unmasked key blocks issue the next block's QK^T before this block's softmax, so "
         "the tensor cores work while the softmax runs (FlashAttention-3's overlap; one extra QK^T per tile)",
         constant="OVERLAP_QK", ws90="refused"),
    Knob("alibi_mma", _BOOL, False, "ALiBi's per-key term on key blocks wholly on one side of a query tile's "
         "diagonal comes from a depth-16 QK^T-like matmul, the rest is a per-row offset: those blocks cost the softmax "
         "no more than unmasked ones (head dim 64 is bound by instruction issue)",
         constant="ALIBI_MMA", prune="alibi", ws90="refused"),
    Knob("alibi_bound", _BOOL, False, "ALiBi query tiles skip keys whose decay provably leaves them under "
         "2^-(26 + log2 N_kv) of the row sum (a Cauchy-Schwarz bound from each head's largest key norm, which the "
         "launcher passes): exact to fp32 rounding", constant="ALIBI_BOUND", launch_key="alibi_bound", prune="alibi",
         ws90="refused"),
    Knob("bwd_block_m", (16, 32, 64, 128), 32, "backward query tile", accepted=_TILES, launch_key="BWD_BLOCK_M",
         direction="bwd", prune="q_tile_bwd"),
    Knob("bwd_block_n", (16, 32, 64, 128), 64, "backward key tile", accepted=_TILES, launch_key="BWD_BLOCK_N",
         direction="bwd", prune="kv_tile"),
    Knob("bwd_num_warps", (2, 4, 8), 4, "warps per backward program", accepted=_WARPS, launch_key="bwd_num_warps",
         direction="bwd"),
    Knob("bwd_num_stages", (1, 2, 3, 4), 2, "backward pipelining stages", accepted=tuple(range(1, 9)),
         launch_key="bwd_num_stages", direction="bwd"),
    Knob("bwd_transposed", _BOOL, False, "dK/dV from S^T = K Q^T (no register transposes; the Triton tutorial's form)",
         constant="BWD_TRANSPOSED", direction="bwd"),
    Knob("bwd_dq_swap", _BOOL, False, "the dq kernel takes the backward tiles swapped (a large query tile for dq, a "
         "large key tile for dK/dV)",
         launch_key="bwd_dq_swap", direction="bwd"),
    Knob("bwd_dq_atomic", _BOOL, False, "dq accumulated by the dK/dV kernel with fp32 atomic adds, no dq kernel "
         "(FlashAttention-2's form: 5 tile matmuls per block pair instead of 7; dq's last bits vary run to run)",
         constant="BWD_DQ_ATOMIC", launch_key="bwd_dq_atomic", direction="bwd"),
    Knob("bwd_dq_tma", _BOOL, False, "with bwd_dq_atomic, each dq tile is added by one bulk reduce-add of Hopper's "
         "copy engine through a tensor descriptor (FlashAttention-3's dQ accumulation) instead of one atomic per "
         "element; no effect without bwd_dq_atomic", constant="BWD_DQ_TMA", launch_key="bwd_dq_tma",
         direction="bwd", prune="hopper"),
    Knob("bwd_ws90", _BOOL, False, "the backward is flash_ws90's one fused Gluon kernel for sm_90 (FlashAttention-3's "
         "shape: S and dP once per block pair, 5 tile matmuls instead of 7, dq added by TMA bulk reduce-adds); "
         "16-bit q/k/v, head dim 64 or 128, no mask but causal; the bwd_* tile knobs then do not act",
         launch_key="bwd_ws90", direction="bwd", prune="fused_bwd"),
)


def genome_space(knobs: tuple[Knob, ...] = KNOBS) -> dict[str, tuple[Any, ...]]:
    """Search space: knob name -> values (pruned per spec by search/operators.spec_space)."""
    return {k.name: k.values for k in knobs}


GENOME_SPACE: dict[str, tuple[Any, ...]] = genome_space()
KNOB_BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}


def constants_block(values: Mapping[str, Any], knobs: tuple[Knob, ...] = KNOBS) -> str:
    """The GENOME-CONSTANTS block a template's forward file carries, filled from a genome's knob values."""
    body = "".join(f"{k.constant} = tl.constexpr({values[k.name]})\n" for k in knobs if k.constant)
    return f"# GENOME-CONSTANTS-START\n{body}# GENOME-CONSTANTS-END\n"


def launch_dict(values: Mapping[str, Any], grid: str, knobs: tuple[Knob, ...] = KNOBS) -> dict[str, Any]:
    """A record's ``launch`` dict: the grid rules and every knob the launcher reads, under its launch key."""
    launch: dict[str, Any] = {"grid": grid, "bwd_grid": "bwd"}
    launch.update({k.launch_key: values[k.name] for k in knobs if k.launch_key})
    return launch


# ---- KernelGenome -----------------------------------------------------------------------------------------------


class _GenomeBase:
    """Behaviour of the generated KernelGenome dataclass (fields come from KNOBS, plus ``template``)."""

    _knobs: tuple[Knob, ...] = KNOBS

    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
        template: str

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    def __post_init__(self) -> None:
        for knob in self._knobs:
            knob.check(type(self).__name__, getattr(self, knob.name))
        template = self.template
        if not isinstance(template, str) or not template.isidentifier():
            raise ValueError(f"{type(self).__name__}.template must be an identifier; got {template!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Parse a genome; ValueError for unknown fields and for values of the wrong type or out of the table."""
        if not isinstance(data, Mapping):
            raise ValueError(f"genome must be a JSON object; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {sorted(map(str, unknown))}")
        return cls(**data)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


def make_genome_class(knobs: tuple[Knob, ...], name: str = "KernelGenome", module: str = __name__) -> type:
    """A frozen dataclass with one field per knob (default from the table) and ``template``, validated by table."""
    fields: list[tuple[str, type, Any]] = [(k.name, bool if k.is_bool else int, field(default=k.default))
                                           for k in knobs]
    fields.append(("template", str, field(default="flash_v1")))
    cls = dataclasses.make_dataclass(name, fields, bases=(_GenomeBase,), frozen=True,
                                     namespace={"_knobs": knobs, "__doc__": _genome_doc(knobs)})
    cls.__module__ = module
    return cls


def _genome_doc(knobs: tuple[Knob, ...]) -> str:
    lines = "\n".join(textwrap.fill(f"{k.name}: {k.doc}.", 116, initial_indent="    ", subsequent_indent="      ")
                      for k in knobs)
    return ("A kernel variant: one field per knob of the knob table (artifact.KNOBS), plus the template family that "
            f"renders it.\n\n{lines}\n    template: which template family renders the source.\n")


if TYPE_CHECKING:
    class KernelGenome(_GenomeBase):
        def replace(self, **changes: Any) -> KernelGenome: ...

        @classmethod
        def from_dict(cls, data: Mapping[str, Any]) -> KernelGenome: ...
else:
    KernelGenome = make_genome_class(KNOBS)


# ---- LaunchConfig -----------------------------------------------------------------------------------------------

GRID_RULES = ("fwd", "splitkv", "persistent", "ws90", "ws90_persistent")
WS90_GRIDS = ("ws90", "ws90_persistent")
BWD_GRID_RULES = ("bwd",)


class _LaunchBase:
    """Behaviour of the generated LaunchConfig dataclass: a record's ``launch`` dict, validated."""

    _knobs: tuple[Knob, ...] = KNOBS

    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
        grid: str
        bwd_grid: str

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    def __post_init__(self) -> None:
        if self.grid not in GRID_RULES or self.bwd_grid not in BWD_GRID_RULES:
            raise ValueError(f"unknown grid rule {self.grid!r}/{self.bwd_grid!r}; known {GRID_RULES}, {BWD_GRID_RULES}")
        for knob in self._knobs:
            if knob.launch_field:
                value = getattr(self, knob.launch_field)
                if knob.is_bool and not isinstance(value, bool):
                    raise ValueError(f"launch {knob.launch_key} must be a bool; got {value!r}")
                if isinstance(value, bool) != knob.is_bool or not isinstance(value, int) or value not in knob.accepted:
                    raise ValueError(f"launch {knob.launch_key} must be one of {knob.accepted}; got {value!r}")
        splits = getattr(self, "kv_splits", 1)
        if (self.grid == "splitkv") == (splits == 1) and self.grid != "persistent":
            raise ValueError(f"grid {self.grid!r} does not match kv_splits={splits} (splitkv needs > 1)")
        if self.grid in WS90_GRIDS:
            refused = [k.launch_key for k in self._knobs
                       if k.launch_field and k.ws90 == "refused" and getattr(self, k.launch_field) != k.default]
            if getattr(self, "num_warps", 4) != 4 or refused:
                raise ValueError(f"grid {self.grid!r} runs 4-warp math warpgroups without {refused or 'those keys'}")

    @classmethod
    def key_map(cls) -> dict[str, str]:
        """Launch-dict key -> field name (``BLOCK_M`` -> ``block_m``)."""
        keys = {"grid": "grid", "bwd_grid": "bwd_grid"}
        keys.update({k.launch_key: k.launch_field for k in cls._knobs if k.launch_key and k.launch_field})
        return keys

    @classmethod
    def from_dict(cls, launch: Mapping[str, Any]) -> Any:
        """Parse a launch dict; missing keys take the knob defaults (records written before the knob existed)."""
        if not isinstance(launch, Mapping):
            raise ValueError(f"launch config must be a JSON object; got {type(launch).__name__}")
        keys = cls.key_map()
        unknown = set(launch) - set(keys)
        if unknown:
            raise ValueError(f"unknown launch key(s) {sorted(map(str, unknown))}; known {sorted(keys)}")
        return cls(**{keys[k]: v for k, v in launch.items()})

    def to_dict(self) -> dict[str, Any]:
        """The launch dict (every key, under its launch spelling)."""
        return {key: getattr(self, name) for key, name in self.key_map().items()}


def make_launch_class(knobs: tuple[Knob, ...], name: str = "LaunchConfig", module: str = __name__) -> type:
    """A frozen dataclass with the grid rules and one field per knob that has a launch key."""
    fields: list[tuple[str, type, Any]] = [("grid", str, field(default="fwd"))]
    fields += [(k.launch_field, bool if k.is_bool else int, field(default=k.default))
               for k in knobs if k.launch_field and k.direction != "bwd"]
    fields.append(("bwd_grid", str, field(default="bwd")))
    fields += [(k.launch_field, bool if k.is_bool else int, field(default=k.default))
               for k in knobs if k.launch_field and k.direction == "bwd"]
    cls = dataclasses.make_dataclass(name, fields, bases=(_LaunchBase,), frozen=True, namespace={
        "_knobs": knobs, "__doc__": "A record's launch dict, validated: the grid rules and the launch keys of "
                                    "the knob table (artifact.KNOBS); missing keys take the knob defaults."})
    cls.__module__ = module
    return cls


if TYPE_CHECKING:
    class LaunchConfig(_LaunchBase):
        @classmethod
        def from_dict(cls, launch: Mapping[str, Any]) -> LaunchConfig: ...
else:
    LaunchConfig = make_launch_class(KNOBS)


# ---- KernelSource -----------------------------------------------------------------------------------------------


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KernelSource:
    """A kernel module ready to load: ``source`` defines ``entry_point`` (+ ``{entry}_reduce`` for split-K) and,
    when ``bwd_entry_point`` is set, ``{bwd}_preprocess``, ``{bwd}_dkdv``, ``{bwd}_dq`` (ABI: kernels/launch.py)."""

    source: str
    entry_point: str
    bwd_entry_point: str | None
    launch: LaunchConfig

    def __post_init__(self) -> None:
        for name in (self.entry_point, self.bwd_entry_point):
            if name is not None and not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"KernelSource entry point must be an identifier; got {name!r}")

    @property
    def sha256(self) -> str:
        return source_sha256(self.source)

    @property
    def launch_dict(self) -> dict[str, Any]:
        return self.launch.to_dict()

    @property
    def kernel_id(self) -> str:
        return kernel_id(self.sha256, self.entry_point, self.bwd_entry_point, self.launch_dict)


# ---- KernelMetrics / KernelRecord -------------------------------------------------------------------------------

RECORD_FORMAT = 2
Tier = Literal["template", "source"]
TIERS: tuple[str, ...] = ("template", "source")


@dataclass(frozen=True)
class KernelMetrics:
    """Measured on the record's hardware, every time in the same process as the kernel's (the timing worker).

    speedup / baseline / baseline_ms: over the best built-in backend (FlexAttention included), the quality figure
    reports show. speedup_vs_fallback / fallback_ms: over what the compiled model runs at the site without the
    kernel (SDPA, with the dense mask for window / ALiBi / padding), the figure promotion decides on and class
    records are admitted by. Records written before the fallback was timed have no fallback figure. None = not
    measured; never NaN or infinite."""

    median_ms: float | None = None
    tflops: float | None = None
    speedup: float | None = None
    baseline: str | None = None
    baseline_ms: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    bwd_median_ms: float | None = None
    bwd_speedup: float | None = None
    speedup_vs_fallback: float | None = None
    fallback_ms: float | None = None

    @property
    def speedup_vs_best_builtin(self) -> float | None:
        """``speedup`` by its full name: over the best built-in backend named in ``baseline``."""
        return self.speedup

    @property
    def fallback_margin(self) -> float | None:
        """The speedup over the fallback, or for a record promoted before the fallback was timed (no
        ``speedup_vs_fallback``) its speedup over the best built-in: a lower bound, since the fallback (SDPA as the
        model calls it) is one of the built-ins timed, so it is never faster than the best of them."""
        return self.speedup_vs_fallback if self.speedup_vs_fallback is not None else self.speedup

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "baseline":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"KernelMetrics.baseline must be a string; got {value!r}")
            elif value is not None:
                object.__setattr__(self, f.name, finite_float(f"KernelMetrics.{f.name}", value, minimum=0.0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelMetrics:
        """Known fields only (metrics gain fields over time); each finite and >= 0 or null, else ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"metrics must be a JSON object; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def template_identity(template: str, template_digest: str, genome: Mapping[str, Any]) -> str:
    """The content hash of a template-tier record: what its source is a pure function of."""
    return stable_hash({"template": template, "template_digest": template_digest, "genome": dict(genome)})


@dataclass(frozen=True)
class KernelRecord:
    """A verified kernel for one spec on one GPU, in one of two trust tiers.

    tier "template": an installed template + ``genome``; ``source`` is None and the kernel is re-rendered from the
    installed template when loaded (``kernels.tiers.kernel_for_record``), so no foreign code runs.
    ``template_digest`` is the digest of the template it was measured with; ``sha256`` is ``template_identity``.
    tier "source": ``source`` is a full Triton module (an agent edit), gated by the kernel-source check before
    use and, when trusted keys are configured, a bundle signature; ``sha256`` hashes the source.
    entry_point / bwd_entry_point: the forward / backward ``@triton.jit`` names (launcher ABI in
    ``kernels/launch.py``; bwd None = backward recomputes through the fallback). launch: the launch dict the
    trusted launcher reads (validated as a LaunchConfig). verified_software: software keys it was (re)verified on.
    """

    spec: AttentionSpec
    hardware: HardwareKey
    software: SoftwareKey
    source: str | None
    entry_point: str
    launch: dict[str, Any]
    genome: dict[str, Any] | None = None
    bwd_entry_point: str | None = None
    metrics: KernelMetrics = field(default_factory=KernelMetrics)
    lineage_id: str = ""
    parent_ids: tuple[str, ...] = ()
    operator: str = "baseline"
    created_at: float = field(default_factory=time.time)
    sha256: str = ""
    verified_software: tuple[SoftwareKey, ...] = ()
    format: int = RECORD_FORMAT
    tier: str = "source"
    template_digest: str = ""

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"KernelRecord.tier must be one of {TIERS}; got {self.tier!r}")
        for name in (self.entry_point, self.bwd_entry_point):
            if name is not None and not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"KernelRecord entry point must be an identifier; got {name!r}")
        LaunchConfig.from_dict(self.launch)  # a launch dict the launcher cannot use is refused here
        if self.tier == "template":
            if self.source is not None:
                raise ValueError("a template-tier KernelRecord carries no source (it is re-rendered on load)")
            if self.genome is None or not self.template_digest:
                raise ValueError("a template-tier KernelRecord needs its genome and template_digest")
            genome = KernelGenome.from_dict(self.genome)  # validated; knobs it lacks take their defaults
            # The identity hashes the genome as written, not as parsed now: a knob added to the table later
            # (its default is the behaviour such records had) must not change the hash of every record before it.
            given = dict(self.genome)
            actual = template_identity(genome.template, self.template_digest, given)
            object.__setattr__(self, "genome", given)
        else:
            if not isinstance(self.source, str):
                raise ValueError(f"a source-tier KernelRecord needs its source text; got {type(self.source).__name__}")
            actual = source_sha256(self.source)
        if not self.sha256:
            object.__setattr__(self, "sha256", actual)
        elif self.sha256 != actual:
            raise ValueError(f"KernelRecord sha256 mismatch: recorded {self.sha256[:12]}…, content hashes to "
                             f"{actual[:12]}…")
        object.__setattr__(self, "parent_ids", tuple(self.parent_ids))
        object.__setattr__(self, "verified_software", tuple(self.verified_software))

    @property
    def template(self) -> str | None:
        """The template family of a template-tier record (None for source records)."""
        return str(self.genome["template"]) if self.tier == "template" and self.genome else None

    @property
    def launch_config(self) -> LaunchConfig:
        return LaunchConfig.from_dict(self.launch)

    @property
    def kernel_id(self) -> str:
        """Short content id: changes whenever the source (template tier: template digest + genome) or launch
        config changes."""
        return kernel_id(self.sha256, self.entry_point, self.bwd_entry_point, self.launch)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": self.format,
            "tier": self.tier,
            "spec": self.spec.to_dict(),
            "hardware": self.hardware.to_dict(),
            "software": self.software.to_dict(),
            "entry_point": self.entry_point,
            "bwd_entry_point": self.bwd_entry_point,
            "launch": dict(self.launch),
            "genome": self.genome,
            "metrics": self.metrics.to_dict(),
            "lineage_id": self.lineage_id,
            "parent_ids": list(self.parent_ids),
            "operator": self.operator,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "verified_software": [s.to_dict() for s in self.verified_software],
        }
        if self.tier == "template":
            data["template_digest"] = self.template_digest
        else:
            data["source"] = self.source
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelRecord:
        """Parse a record; ValueError (never KeyError/TypeError/OverflowError) on malformed or future-format data.

        Format 1 (no tier) parses as a source record; ``kernels.tiers.tiered`` turns one whose genome renders to
        exactly its source into a template record.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"record must be a JSON object; got {type(data).__name__}")
        try:
            fmt = bounded_int("record format", data.get("format", 1), minimum=1)
            if fmt > RECORD_FORMAT:
                raise ValueError(f"record format {fmt} is newer than this avo_inductor understands ({RECORD_FORMAT})")
            tier = _string(data.get("tier", "source"), "tier")
            genome = data.get("genome")
            if genome is not None:
                KernelGenome.from_dict(genome)  # validated here; kept as written (see __post_init__)
                genome = dict(genome)
            created = finite_float("record created_at", data.get("created_at", 0.0), minimum=0.0)
            return cls(
                spec=AttentionSpec.from_dict(data["spec"]),
                hardware=HardwareKey.from_dict(data["hardware"]),
                software=SoftwareKey.from_dict(data["software"]),
                source=None if tier == "template" else _string(data["source"], "source"),
                entry_point=_string(data["entry_point"], "entry_point"),
                bwd_entry_point=_optional_string(data.get("bwd_entry_point"), "bwd_entry_point"),
                launch=_launch(data["launch"]),
                genome=genome,
                metrics=KernelMetrics.from_dict(data.get("metrics") or {}),
                lineage_id=_string(data.get("lineage_id", ""), "lineage_id"),
                parent_ids=tuple(_string(p, "parent_ids[]") for p in _list(data.get("parent_ids", ()), "parent_ids")),
                operator=_string(data.get("operator", "baseline"), "operator"),
                created_at=created,
                sha256=_string(data.get("sha256", ""), "sha256"),
                verified_software=tuple(SoftwareKey.from_dict(s)
                                        for s in _list(data.get("verified_software", ()), "verified_software")),
                format=RECORD_FORMAT,
                tier=tier,
                template_digest=_string(data.get("template_digest", ""), "template_digest"),
            )
        except (KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"malformed KernelRecord: {type(exc).__name__}: {exc}") from None

    def with_changes(self, **changes: Any) -> KernelRecord:
        return dataclasses.replace(self, **changes)


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"KernelRecord.{name} must be a string; got {type(value).__name__}")
    return value


def _optional_string(value: Any, name: str) -> str | None:
    return None if value is None else _string(value, name)


def _list(value: Any, name: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"KernelRecord.{name} must be a list; got {type(value).__name__}")
    return value


def _launch(value: Any) -> dict[str, Any]:
    """A launch dict whose integers are bounded (a 1e999 or a 10^400 tile is refused before LaunchConfig sees it)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"KernelRecord.launch must be a JSON object; got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = bounded_int(f"launch {key}", item, minimum=0, maximum=MAX_INT)
        out[str(key)] = item
    return out
