"""Kernel source -> callable, only after its sha256 matches and the kernel-source grammar accepts it; records by
trust tier.

Triton's JIT reads a kernel's text with inspect.getsource, so the source is written to a real file named by
its sha256 under ``<AVO_CACHE_DIR>/kernel_src/`` and imported from there with importlib (never exec of a string).
Loaded kernels are cached in-process by kernel id, so a record is imported once per process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import linecache
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..artifact import KernelRecord, KernelSource, LaunchConfig
from ..spec import kernel_id
from . import gluon_compat
from .grammar import Violation, check_source
from .launch import KernelFunctions
from .tiers import kernel_for_record, tiered

_LOCK = threading.Lock()
_LOADED: dict[str, LoadedKernel] = {}


@dataclass(frozen=True)
class LoadedKernel:
    """An imported, grammar-checked kernel module with its validated launch config."""

    kernel_id: str
    sha256: str
    entry_point: str
    bwd_entry_point: str | None
    launch: LaunchConfig
    functions: KernelFunctions
    path: Path

    @property
    def has_backward(self) -> bool:
        return self.functions.has_backward


def required_functions(entry_point: str, bwd_entry_point: str | None, launch: Mapping[str, Any]) -> tuple[str, ...]:
    """Every @triton.jit name the launcher will call for this entry point / launch config."""
    names = [entry_point]
    if int(launch.get("kv_splits", 1)) > 1:
        names.append(f"{entry_point}_split_combine" if launch.get("split_combine") else f"{entry_point}_reduce")
    if bwd_entry_point:
        names += [f"{bwd_entry_point}_preprocess", f"{bwd_entry_point}_dkdv", f"{bwd_entry_point}_dq"]
        if launch.get("bwd_ws90"):
            names.append(f"{bwd_entry_point}_ws90")
    return tuple(names)


def static_violations(source: str, entry_point: str, bwd_entry_point: str | None,
                      launch: Mapping[str, Any]) -> list[Violation]:
    """The one static gate for kernel source (bundles, the store, search candidates, the loader): a valid launch
    config, then the positive kernel-source grammar (kernels/grammar.py) with every function the launcher will
    call. Nothing is executed.

    Raises ValueError ("invalid launch config: ...") for a launch dict the launcher cannot use.
    """
    try:
        cfg = LaunchConfig.from_dict(launch)
        names = required_functions(entry_point, bwd_entry_point, cfg.to_dict())
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid launch config {launch!r}: {exc}") from None
    return check_source(source, names)


def _source_dir() -> Path:
    from ..settings import get_settings

    return Path(get_settings().cache_dir) / "kernel_src"


def _write_source(source: str, sha: str) -> Path:
    """Write atomically (temp file + rename); an existing file is reused only if its bytes hash to ``sha``."""
    directory = _source_dir()
    path = directory / f"avo_kernel_{sha}.py"
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha:
        return path
    try:
        _atomic_write(path, source)
    except OSError as exc:
        raise RuntimeError(f"cannot write kernel source to {directory}: {exc}") from exc
    return path


def _atomic_write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(source.encode("utf-8"))
    os.replace(tmp, path)


def _source_file_present(loaded: LoadedKernel, source: str) -> bool:
    """Whether a loaded kernel's module file exists, written again where it was imported from if only the file was
    deleted.

    Files and folders can go while the process lives (a temporary AVO_CACHE_DIR removed, a cleaner): Inductor reads
    a user kernel's lines from that file when it compiles a graph calling it (``inspect.getsourcelines``), and
    tracebacks and ``LoadedKernel.path`` readers want it too. A removed folder is never made again (under /tmp it
    could be someone else's by now): False, and the caller imports the source afresh in the current folder."""
    if loaded.path.is_file():
        return True
    if not loaded.path.parent.is_dir():
        return False
    try:
        _atomic_write(loaded.path, source)
    except OSError:
        return False
    linecache.checkcache(str(loaded.path))
    return True


def _import(path: Path, sha: str) -> ModuleType:
    name = f"avo_kernel_{sha[:16]}"
    if name in sys.modules and getattr(sys.modules[name], "__avo_sha256__", None) == sha:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import kernel source from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise RuntimeError(f"kernel module {path.name} failed to import: {type(exc).__name__}: {exc}") from exc
    module.__avo_sha256__ = sha  # type: ignore[attr-defined]
    return module


def _function(module: ModuleType, name: str) -> Any:
    fn = module.__dict__.get(name)
    if fn is None or not hasattr(fn, "run"):  # triton.JITFunction (or an autotuner / heuristics wrapper)
        raise RuntimeError(f"kernel source has no @triton.jit function {name!r}")
    return fn


def check_record(record: KernelRecord, *, source_needs_signature: bool = False) -> KernelRecord:
    """The static gate of a stored record, by trust tier (see tiers.py); returns it in its tier (format-1 records
    whose genome renders to their source come back as template records). Nothing is executed.

    Template tier: the installed template must render its genome for its spec, to its launch config. Source tier:
    refused when ``source_needs_signature`` (trusted keys are configured and its bundle is not signed by one of
    them), else the kernel-source gate with every function the launcher will call. Raises ValueError.
    """
    record = tiered(record)
    if record.tier == "template":
        kernel_for_record(record)
        return record
    if source_needs_signature:
        raise ValueError(f"kernel {record.kernel_id} carries its own source (agent edit): with trusted keys "
                         "configured it must come from a bundle signed by one of them")
    assert record.source is not None
    problems = static_violations(record.source, record.entry_point, record.bwd_entry_point, record.launch)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise ValueError(f"kernel {record.kernel_id} source rejected by the static allowlist: {listed}")
    return record


def load_source(source: str, entry_point: str, bwd_entry_point: str | None, launch: Mapping[str, Any],
                sha256: str | None = None) -> LoadedKernel:
    """Check, write, import and bind ``source``; ``sha256`` (if given) must match the text.

    Raises ValueError for a hash mismatch, a grammar violation or a bad launch dict; RuntimeError when the
    module cannot be written or imported.
    """
    actual = hashlib.sha256(source.encode("utf-8")).hexdigest()
    if sha256 is not None and sha256 != actual:
        raise ValueError(f"kernel source sha256 mismatch: expected {sha256[:12]}…, source hashes to {actual[:12]}…")
    kid = kernel_id(actual, entry_point, bwd_entry_point, dict(launch))
    with _LOCK:
        cached = _LOADED.get(kid)
    if cached is not None:
        if _source_file_present(cached, source):
            return cached
        with _LOCK:
            _LOADED.pop(kid, None)
        sys.modules.pop(f"avo_kernel_{actual[:16]}", None)
    problems = static_violations(source, entry_point, bwd_entry_point, launch)
    if problems:
        listed = "; ".join(str(p) for p in problems[:10])
        raise ValueError(f"kernel source rejected by the static allowlist ({len(problems)} problem(s)): {listed}")
    cfg = LaunchConfig.from_dict(launch)
    gluon_compat.install()  # the Gluon spellings templates use exist before the module is compiled
    module = _import(_write_source(source, actual), actual)
    reduce_name = f"{entry_point}_reduce"
    fused = cfg.kv_splits > 1 and cfg.split_combine
    fns = KernelFunctions(
        fwd=_function(module, entry_point),
        reduce=_function(module, reduce_name) if reduce_name in module.__dict__ or (cfg.kv_splits > 1 and not fused)
        else None,
        split_combine=_function(module, f"{entry_point}_split_combine") if fused else None,
        bwd_preprocess=_function(module, f"{bwd_entry_point}_preprocess") if bwd_entry_point else None,
        bwd_dkdv=_function(module, f"{bwd_entry_point}_dkdv") if bwd_entry_point else None,
        bwd_dq=_function(module, f"{bwd_entry_point}_dq") if bwd_entry_point else None,
        bwd_ws90=_function(module, f"{bwd_entry_point}_ws90") if bwd_entry_point and cfg.bwd_ws90 else None,
    )
    loaded = LoadedKernel(kid, actual, entry_point, bwd_entry_point, cfg, fns, Path(module.__file__ or ""))
    with _LOCK:
        return _LOADED.setdefault(kid, loaded)


def load_kernel(kernel: KernelSource) -> LoadedKernel:
    """Load a rendered or stored kernel module (same gates as :func:`load_source`)."""
    return load_source(kernel.source, kernel.entry_point, kernel.bwd_entry_point, kernel.launch_dict)


def load_record(record: KernelRecord) -> LoadedKernel:
    """Load a KernelRecord's kernel: a template record re-rendered from the installed template, a source record's
    own text after its recorded sha256 is checked against it (before anything runs)."""
    if record.tier == "template":
        # Registered under the record's own id as well, so the op in a compiled graph, explain() and the store name
        # one id (it hashes template digest + genome + launch, which determine the rendered text in a process).
        loaded = dataclasses.replace(load_kernel(kernel_for_record(record)), kernel_id=record.kernel_id)
        with _LOCK:
            held = _LOADED.get(loaded.kernel_id)
            if held is None or held.path != loaded.path:  # new, or its module was imported afresh (file lost)
                _LOADED[loaded.kernel_id] = held = loaded
            return held
    assert record.source is not None
    return load_source(record.source, record.entry_point, record.bwd_entry_point, dict(record.launch),
                       sha256=record.sha256)


def get_loaded(kernel_id: str) -> LoadedKernel | None:
    with _LOCK:
        return _LOADED.get(kernel_id)
