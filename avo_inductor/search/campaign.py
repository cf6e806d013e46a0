"""Campaign files (TOML in the repository's ``search/`` folder): which attention specs to tune, and how hard.

Parsing is strict — an unknown key or a bad value raises ValueError naming the file and the field
(``search/llama.toml: spec[2].kv_heads: ...``) — because a typo that silently drops a shape wastes GPU hours.
See ``search/README.md`` for the format.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import AttentionSpec, MaskKind

# [search] keys a campaign may set, with their types; CLI flags given explicitly override them.
SEARCH_KEYS: dict[str, type | tuple[type, ...]] = {
    "generations": int, "budget_minutes": (int, float), "population": int, "islands": int,
    "migration_interval": int, "seed": int, "operators": list, "max_dollars": (int, float),
    "max_tokens": int, "agent_model": str, "seed_variants": int, "eval_batch": int, "seed_genomes": list,
}
_SPEC_KEYS = {
    "batch", "q_heads", "kv_heads", "q_len", "kv_len", "seq_len", "head_dim", "v_head_dim", "dtype", "scale",
    "causal", "window", "mask", "dropout_p", "needs_grad", "label", "tags",
}
_TOP_KEYS = {"campaign", "search", "defaults", "spec"}


@dataclass(frozen=True)
class CampaignSpec:
    spec: AttentionSpec
    label: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    description: str = ""
    entries: tuple[CampaignSpec, ...] = ()
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def specs(self) -> tuple[AttentionSpec, ...]:
        """Distinct specs in file order (two entries with the same cache key are searched once)."""
        seen: dict[str, AttentionSpec] = {}
        for e in self.entries:
            seen.setdefault(e.spec.cache_key(), e.spec)
        return tuple(seen.values())


def _fail(path: Path, where: str, message: str) -> ValueError:
    return ValueError(f"{path}: {where}: {message}")


def _check_type(path: Path, where: str, value: Any, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise _fail(path, where, f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise _fail(path, where, f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def _parse_spec(path: Path, where: str, raw: dict[str, Any], defaults: dict[str, Any]) -> CampaignSpec:
    data = {**defaults, **raw}
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}", f"unknown field; valid: {', '.join(sorted(_SPEC_KEYS))}")
    label = data.pop("label", "")
    tags = data.pop("tags", [])
    _check_type(path, f"{where}.label", label, str)
    _check_type(path, f"{where}.tags", tags, list)
    if "seq_len" in raw and ("q_len" in raw or "kv_len" in raw):
        raise _fail(path, f"{where}.seq_len", "give either seq_len or q_len/kv_len, not both")
    seq = data.pop("seq_len", None)
    if seq is not None:  # a default seq_len fills whichever of q_len / kv_len the entry leaves out
        if "q_len" not in raw:
            data["q_len"] = seq
        if "kv_len" not in raw:
            data["kv_len"] = seq
    if "kv_len" not in data and "q_len" in data:
        data["kv_len"] = data["q_len"]
    for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim"):
        if name not in data:
            raise _fail(path, f"{where}.{name}", "missing (required)")
    for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "v_head_dim", "window"):
        if name in data:
            _check_type(path, f"{where}.{name}", data[name], int)
    for name in ("causal", "needs_grad"):
        if name in data:
            _check_type(path, f"{where}.{name}", data[name], bool)
    if "mask" in data:
        valid = [m.value for m in MaskKind]
        if data["mask"] not in valid:
            raise _fail(path, f"{where}.mask", f"must be one of {valid}; got {data['mask']!r}")
    if "scale" in data:
        _check_type(path, f"{where}.scale", data["scale"], (int, float))
        data["scale"] = float(data["scale"])
    try:
        spec = AttentionSpec(**data)
    except (ValueError, TypeError) as exc:
        raise _fail(path, where, str(exc)) from None
    return CampaignSpec(spec, label, tuple(str(t) for t in tags))


def _check_seed_genome(path: Path, where: str, overrides: Any) -> None:
    """A seed genome is a table of KernelGenome fields applied over each spec's default genome."""
    from ..kernels.genome import KernelGenome

    _check_type(path, where, overrides, dict)
    try:
        KernelGenome().replace(**overrides)
    except (TypeError, ValueError) as exc:
        raise _fail(path, where, str(exc)) from None


def parse_campaign(text: str, path: str | Path = "<campaign>") -> Campaign:
    """Parse campaign TOML ``text``; ``path`` is used in error messages and as the default name."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, "syntax", str(exc)) from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"unknown table; valid: {', '.join(sorted(_TOP_KEYS))}")
    meta = doc.get("campaign", {})
    _check_type(path, "campaign", meta, dict)
    bad = sorted(set(meta) - {"name", "description"})
    if bad:
        raise _fail(path, f"campaign.{bad[0]}", "unknown field; valid: name, description")
    search = doc.get("search", {})
    _check_type(path, "search", search, dict)
    for key, value in search.items():
        if key not in SEARCH_KEYS:
            raise _fail(path, f"search.{key}", f"unknown field; valid: {', '.join(sorted(SEARCH_KEYS))}")
        _check_type(path, f"search.{key}", value, SEARCH_KEYS[key])
    for i, overrides in enumerate(search.get("seed_genomes", [])):
        _check_seed_genome(path, f"search.seed_genomes[{i}]", overrides)
    if "operators" in search:
        bad_ops = [o for o in search["operators"] if o not in ("structured", "agent")]
        if bad_ops:
            raise _fail(path, "search.operators", f"unknown operator(s) {bad_ops}; valid: structured, agent")
    defaults = doc.get("defaults", {})
    _check_type(path, "defaults", defaults, dict)
    raw_specs = doc.get("spec", [])
    _check_type(path, "spec", raw_specs, list)
    if not raw_specs:
        raise _fail(path, "spec", "no [[spec]] entries: a campaign needs at least one shape")
    entries = tuple(_parse_spec(path, f"spec[{i}]", s, defaults) for i, s in enumerate(raw_specs))
    return Campaign(name=str(meta.get("name", path.stem)), path=path, description=str(meta.get("description", "")),
                    entries=entries, search=dict(search))


def load_campaign(path: str | Path) -> Campaign:
    """Read and parse a campaign file; a missing file is a ValueError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read campaign file: {exc.strerror or exc}") from None
    return parse_campaign(text, path)
