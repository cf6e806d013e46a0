"""Runtime settings: one frozen dataclass, read from ``AVO_*`` environment variables here and nowhere else.

``configure(**overrides)`` in the public API replaces the active settings for this process; every other
module calls :func:`get_settings` so that tests and users see one consistent view.
"""
from __future__ import annotations

import dataclasses
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from .parsing import bounded_int, finite_float, strict_bool

ON_MISS_CHOICES = ("fallback", "search", "error")
_ENV_NAMES = {"cache_dir": "AVO_CACHE_DIR", "cache_path": "AVO_CACHE_PATH", "on_miss": "AVO_ON_MISS",
              "strict": "AVO_STRICT", "log": "AVO_LOG", "use_shipped": "AVO_USE_SHIPPED",
              "trusted_keys": "AVO_TRUSTED_KEYS", "require_signed": "AVO_REQUIRE_SIGNED",
              "agent_model": "AVO_AGENT_MODEL", "agent_max_tokens": "AVO_AGENT_MAX_TOKENS",
              "agent_max_dollars": "AVO_AGENT_MAX_DOLLARS", "remote_cache": "AVO_REMOTE_CACHE",
              "signing_key": "AVO_SIGNING_KEY", "background_checks": "AVO_BACKGROUND_CHECKS"}
REMOTE_SCHEMES = ("redis://", "rediss://", "unix://")


def _default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("avo_inductor", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Everything the backend, store and search read from the environment.

    cache_dir: writable KernelStore directory (AVO_CACHE_DIR).
    cache_path: read-only bundle directories searched after it (AVO_CACHE_PATH, os.pathsep-separated).
    on_miss: what a compile does for a spec with no tuned kernel (AVO_ON_MISS).
    strict: re-raise internal failures instead of falling back to stock Inductor (AVO_STRICT).
    log: log every attention site at compile time (AVO_LOG).
    use_shipped: also search the bundles shipped inside the package (AVO_USE_SHIPPED).
    trusted_keys: Ed25519 public keys (hex or file paths) whose bundle signatures are accepted (AVO_TRUSTED_KEYS).
    require_signed: refuse bundles without a trusted signature (AVO_REQUIRE_SIGNED).
    agent_model / agent_max_tokens / agent_max_dollars: the LLM variation operator (AVO_AGENT_*).
    remote_cache: a Redis URL shared by a fleet: read through on a local miss, promoted records published
    (AVO_REMOTE_CACHE; None = off).
    signing_key: Ed25519 private key (PEM path) that records published to the remote cache are signed with
    (AVO_SIGNING_KEY).
    background_checks: a record's first-use check on a CUDA site runs while Inductor compiles, the compiled graph
    released after the verdict (backend/deferred.py); off: checked in the pass, before the compile
    (AVO_BACKGROUND_CHECKS).
    anthropic_api_key: read from ANTHROPIC_API_KEY; None disables the agent operator.
    """

    cache_dir: Path = field(default_factory=_default_cache_dir)
    cache_path: tuple[Path, ...] = ()
    on_miss: str = "fallback"
    strict: bool = False
    log: bool = False
    use_shipped: bool = True
    trusted_keys: tuple[str, ...] = ()
    require_signed: bool = False
    agent_model: str = "claude-sonnet-4-6"
    agent_max_tokens: int = 2_000_000
    agent_max_dollars: float = 20.0
    anthropic_api_key: str | None = field(default=None, repr=False)
    remote_cache: str | None = None
    signing_key: Path | None = None
    background_checks: bool = True

    def __post_init__(self) -> None:
        # One normaliser for both paths (settings_from_env and configure()), so they cannot drift: every field is
        # parsed here, strings included, and the clean value replaces the raw one.
        for name, value in _normalised(self).items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cache_dir"] = str(self.cache_dir)
        out["cache_path"] = [str(p) for p in self.cache_path]
        out["anthropic_api_key"] = "***" if self.anthropic_api_key else None
        out["signing_key"] = str(self.signing_key) if self.signing_key is not None else None
        out["remote_cache"] = redacted_url(self.remote_cache) if self.remote_cache else None
        return out


def redacted_url(url: str) -> str:
    """``url`` without its password (settings dumps, store labels and messages never show it)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _label(name: str) -> str:
    return f"{_ENV_NAMES[name]} / {name}" if name in _ENV_NAMES else name


def _paths(name: str, raw: Any) -> tuple[Path, ...]:
    if isinstance(raw, (str, Path)):
        raw = str(raw).split(os.pathsep)
    try:
        items = list(raw)
    except TypeError:
        raise ValueError(f"{_label(name)} must be a path list; got {raw!r}") from None
    if not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise ValueError(f"{_label(name)} must be folder paths; got {items!r}")
    return tuple(Path(p).expanduser() for p in items if p)


def _normalised(s: Settings) -> dict[str, Any]:
    """Every field of ``s`` parsed defensively: bools strictly, numbers finite and in range, paths as Paths."""
    out: dict[str, Any] = {}
    if not isinstance(s.cache_dir, (str, os.PathLike)) or not str(s.cache_dir):
        raise ValueError(f"{_label('cache_dir')} must be a folder path; got {s.cache_dir!r}")
    out["cache_dir"] = Path(s.cache_dir).expanduser()
    out["cache_path"] = _paths("cache_path", s.cache_path)
    on_miss = s.on_miss.strip().lower() if isinstance(s.on_miss, str) else s.on_miss
    if on_miss not in ON_MISS_CHOICES:
        raise ValueError(f"{_label('on_miss')} must be one of {', '.join(ON_MISS_CHOICES)}; got {s.on_miss!r}")
    out["on_miss"] = on_miss
    for name in ("strict", "log", "use_shipped", "require_signed", "background_checks"):
        out[name] = strict_bool(_label(name), getattr(s, name))
    keys = s.trusted_keys
    keys = (keys,) if isinstance(keys, str) else keys  # configure(trusted_keys="hex or file"): one key, never split
    if not isinstance(keys, (tuple, list, set, frozenset)) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{_label('trusted_keys')} must be strings; got {keys!r}")
    out["trusted_keys"] = tuple(keys)
    if not isinstance(s.agent_model, str) or not s.agent_model.strip():
        raise ValueError(f"{_label('agent_model')} must be a model name; got {s.agent_model!r}")
    out["agent_max_tokens"] = bounded_int(_label("agent_max_tokens"), s.agent_max_tokens, minimum=1)
    # NaN would disable the cap (every `spent >= nan` is False); inf is no cap at all.
    out["agent_max_dollars"] = finite_float(_label("agent_max_dollars"), s.agent_max_dollars, minimum=0.0)
    remote = s.remote_cache.strip() if isinstance(s.remote_cache, str) else s.remote_cache
    if remote is not None and (not isinstance(remote, str) or not remote.startswith(REMOTE_SCHEMES)):
        raise ValueError(f"{_label('remote_cache')} must be a redis://host:port/db URL (or rediss://, unix://); "
                         f"got {s.remote_cache!r}")
    out["remote_cache"] = remote or None
    if s.signing_key is not None and (not isinstance(s.signing_key, (str, os.PathLike)) or not str(s.signing_key)):
        raise ValueError(f"{_label('signing_key')} must be a key file path; got {s.signing_key!r}")
    out["signing_key"] = Path(s.signing_key).expanduser() if s.signing_key is not None else None
    if s.anthropic_api_key is not None and not isinstance(s.anthropic_api_key, str):
        raise ValueError(f"{_label('anthropic_api_key')} must be a string; got a {type(s.anthropic_api_key).__name__}")
    return out


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default ``os.environ``); a bad value names the variable and the choices.

    Values are handed over as raw strings: Settings.__post_init__ parses them exactly as it parses configure()."""
    env = os.environ if env is None else env
    kwargs: dict[str, Any] = {}
    for key, name in _ENV_NAMES.items():
        raw = env.get(name)
        if raw is None:
            continue
        if key in ("strict", "log", "use_shipped", "require_signed", "background_checks", "on_miss"):
            kwargs[key] = raw  # set but empty is meaningful here: "" is false, and an empty on_miss is an error
        elif raw:
            kwargs[key] = tuple(k for k in raw.split(os.pathsep) if k) if key == "trusted_keys" else raw
    if env.get("ANTHROPIC_API_KEY"):
        kwargs["anthropic_api_key"] = env["ANTHROPIC_API_KEY"]
    return Settings(**kwargs)


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET, read the way Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_active: Settings | None = None


def get_settings() -> Settings:
    """The active settings: those set by configure(), else read once from the environment."""
    global _active
    if _active is None:
        _active = settings_from_env()
    return _active


def configure(**overrides: Any) -> Settings:
    """Override settings for this process, e.g. ``configure(on_miss="error", cache_dir="/srv/avo")``.

    Unknown names raise ValueError listing the valid ones; values are validated like the env vars.
    """
    global _active
    valid = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown avo setting(s) {unknown}; valid: {sorted(valid)}")
    _active = dataclasses.replace(get_settings(), **overrides)
    return _active


def reset_settings() -> None:
    """Forget configure() overrides; the next get_settings() reads the environment again (used by tests)."""
    global _active
    _active = None
