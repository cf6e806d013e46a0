"""Runtime settings: one frozen dataclass, read from ``AVO_*`` environment variables here and nowhere else.

``configure(**overrides)`` in the public API replaces the active settings for this process; every other
module calls :func:`get_settings` so that tests and users see one consistent view.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ON_MISS_CHOICES = ("fallback", "search", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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

    def __post_init__(self) -> None:
        if self.on_miss not in ON_MISS_CHOICES:
            raise ValueError(f"AVO_ON_MISS / on_miss must be one of {', '.join(ON_MISS_CHOICES)}; got {self.on_miss!r}")
        if self.agent_max_tokens <= 0 or self.agent_max_dollars < 0:
            raise ValueError(
                f"agent budget must be positive: max_tokens={self.agent_max_tokens}, max_dollars={self.agent_max_dollars}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cache_dir"] = str(self.cache_dir)
        out["cache_path"] = [str(p) for p in self.cache_path]
        out["anthropic_api_key"] = "***" if self.anthropic_api_key else None
        return out


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def _parse_number(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}; got {raw!r}") from None


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default ``os.environ``); a bad value names the variable and the choices."""
    env = os.environ if env is None else env
    kwargs: dict[str, Any] = {}
    if env.get("AVO_CACHE_DIR"):
        kwargs["cache_dir"] = Path(env["AVO_CACHE_DIR"]).expanduser()
    if env.get("AVO_CACHE_PATH"):
        kwargs["cache_path"] = tuple(Path(p).expanduser() for p in env["AVO_CACHE_PATH"].split(os.pathsep) if p)
    if "AVO_ON_MISS" in env:
        value = env["AVO_ON_MISS"].strip().lower()
        if value not in ON_MISS_CHOICES:
            raise ValueError(f"AVO_ON_MISS must be one of {', '.join(ON_MISS_CHOICES)}; got {env['AVO_ON_MISS']!r}")
        kwargs["on_miss"] = value
    for name, key in (("AVO_STRICT", "strict"), ("AVO_LOG", "log"), ("AVO_USE_SHIPPED", "use_shipped"),
                      ("AVO_REQUIRE_SIGNED", "require_signed")):
        if name in env:
            kwargs[key] = _parse_bool(name, env[name])
    if env.get("AVO_TRUSTED_KEYS"):
        kwargs["trusted_keys"] = tuple(k for k in env["AVO_TRUSTED_KEYS"].split(os.pathsep) if k)
    if env.get("AVO_AGENT_MODEL"):
        kwargs["agent_model"] = env["AVO_AGENT_MODEL"]
    if env.get("AVO_AGENT_MAX_TOKENS"):
        kwargs["agent_max_tokens"] = _parse_number("AVO_AGENT_MAX_TOKENS", env["AVO_AGENT_MAX_TOKENS"], int)
    if env.get("AVO_AGENT_MAX_DOLLARS"):
        kwargs["agent_max_dollars"] = _parse_number("AVO_AGENT_MAX_DOLLARS", env["AVO_AGENT_MAX_DOLLARS"], float)
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
    if "cache_dir" in overrides:
        overrides["cache_dir"] = Path(overrides["cache_dir"]).expanduser()
    if "cache_path" in overrides:
        raw = overrides["cache_path"]
        items = raw.split(os.pathsep) if isinstance(raw, str) else list(raw)
        overrides["cache_path"] = tuple(Path(p).expanduser() for p in items if p)
    if "trusted_keys" in overrides and isinstance(overrides["trusted_keys"], str):
        overrides["trusted_keys"] = (overrides["trusted_keys"],)
    _active = dataclasses.replace(get_settings(), **overrides)
    return _active


def reset_settings() -> None:
    """Forget configure() overrides; the next get_settings() reads the environment again (used by tests)."""
    global _active
    _active = None
