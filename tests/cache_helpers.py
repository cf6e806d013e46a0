"""Shared helpers for the store / bundle / CLI tests: tiny valid KernelRecords, stub verifiers, file digests,
and the worker functions the multi-process tests run (module-level so ``spawn`` children can import them)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avo_inductor.artifact import KernelMetrics, KernelRecord
from avo_inductor.spec import AttentionSpec, HardwareKey, SoftwareKey, store_key

CPU_HW = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
# The versions SoftwareKey.current() reports, without importing triton (spawned workers stay cheap).
SW = SoftwareKey(importlib.metadata.version("triton"), importlib.metadata.version("torch").split("+")[0])
OLD_SW = SoftwareKey("2.0.0", "2.0.0")

KERNEL_SRC = '''"""tiny fake kernel: allowlisted, never launched by these tests"""
import triton
import triton.language as tl

BLOCK = 16


@triton.jit
def {entry}(Q, Out, N, TAG: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(Q + offs, mask=offs < N, other=0.0)
    tl.store(Out + offs, x * {tag}, mask=offs < N)
'''


def make_record(q_len: int = 128, *, hardware: HardwareKey = CPU_HW, software: SoftwareKey = SW, tag: int = 1,
                source: str | None = None, entry: str = "_attn_fwd", speedup: float = 1.5, **spec_kw: Any) -> KernelRecord:
    """A valid record for a tiny spec; ``tag`` changes the source (and so the kernel id)."""
    spec = AttentionSpec(**{"batch": 1, "q_heads": 2, "kv_heads": 1, "q_len": q_len, "kv_len": q_len,
                            "head_dim": 16, "dtype": "float32", **spec_kw})
    return KernelRecord(spec=spec, hardware=hardware, software=software,
                        source=source if source is not None else KERNEL_SRC.format(entry=entry, tag=tag),
                        entry_point=entry, launch={"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1},
                        metrics=KernelMetrics(median_ms=1.0, speedup=speedup, baseline="sdpa"), operator="test",
                        created_at=1_700_000_000.0)


def key_of(record: KernelRecord) -> str:
    return store_key(record.spec, record.hardware)


@dataclass
class StubReport:
    ok: bool
    problems: list[str]
    max_rel_err: float | None = None


def ok_verifier(record: KernelRecord) -> StubReport:
    return StubReport(True, [])


def wrong_results_verifier(record: KernelRecord) -> StubReport:
    return StubReport(False, [f"max rel err 0.73 > 1e-3 at q_len={record.spec.q_len}"], 0.73)


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """rel path -> (sha256, mtime_ns, mode) for every file and folder under ``root`` (no link following)."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            sha = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(root))] = (sha, st.st_mtime_ns, st.st_mode)
    return out


# ---- spawn workers --------------------------------------------------------------------------------------
def pending_worker(args: tuple[str, int, str]) -> int:
    """Enqueue ``n`` misses alternating over two specs, all from model ``origin``."""
    from avo_inductor.cache.store import KernelStore

    directory, n, origin = args
    store = KernelStore(directory, shipped=False, software=SW)
    specs = [make_record(64).spec, make_record(256).spec]
    for i in range(n):
        store.enqueue_pending(specs[i % 2], CPU_HW, origin)
    store.close()
    return n


def import_or_lookup_worker(args: tuple[str, str, list[str], float]) -> dict[str, Any]:
    """``import``: import a bundle; ``lookup``: poll ``keys`` until all hit or the deadline passes.

    Every lookup must return None or a fully valid record: a half-visible import would show up as an error.
    """
    import warnings

    from avo_inductor.cache.bundle import import_bundle
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.settings import Settings

    mode, directory, payload, deadline_s = args
    settings = Settings(cache_dir=Path(directory), use_shipped=False)
    store = KernelStore(directory, shipped=False, software=SW)
    result: dict[str, Any] = {"mode": mode, "errors": [], "lookups": 0, "found": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode == "import":
            report = import_bundle(store, payload[0], verifier=ok_verifier, settings=settings)
            result["found"] = sorted(report.records)
        else:
            end = time.monotonic() + deadline_s
            remaining = set(payload)
            while remaining and time.monotonic() < end:
                for key in list(remaining):
                    result["lookups"] += 1
                    try:
                        hit = store.get(key)
                    except Exception as exc:  # noqa: BLE001 - any exception is the failure we look for
                        result["errors"].append(repr(exc))
                        continue
                    if hit is not None:
                        if key_of(hit.record) != key:
                            result["errors"].append(f"wrong record under {key}")
                        remaining.discard(key)
                        result["found"].append(key)
                time.sleep(0.01)
        result["errors"] += [str(w.message) for w in caught]
    store.close()
    return result



_POOL: Any = None


def spawn_pool() -> Any:
    """One 2-process ``spawn`` pool per test session, shared by the store and bundle tests: each child pays the
    torch import once (~3 s of CPU on this box), not once per test. The test process itself is the third
    concurrent writer/reader."""
    global _POOL
    if _POOL is None:
        import atexit
        import multiprocessing

        _POOL = multiprocessing.get_context("spawn").Pool(2)
        atexit.register(_POOL.terminate)
    return _POOL
