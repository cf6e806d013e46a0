"""Isolated evaluation workers: one subprocess per GPU (one interpreter worker on CPU), JSON lines over pipes.

A candidate kernel is adversarial code: it runs only in a worker spawned with a scrubbed environment (no API
keys or other secrets), pinned to one device, killed with SIGKILL past its hard timeout and restarted, so a hang,
a segfault or a poisoned CUDA context costs one candidate, never the run (OpenEvolve's thread-based evaluator
could not kill a hung kernel). The harness files a worker runs are hashed at its start; a worker whose hash
differs from the one the pool saw first is refused (tamper evidence).

A worker that ran a candidate's host code (under the interpreter the kernel body IS host Python) is never
reused for another candidate: callers ``recycle()`` it (SIGKILL + fresh start) between candidates
(``WorkerPool.each`` does). Handlers get a ``Channel``: ``progress`` for stage names, ``mark``/``sync`` for the
parent's own wall clock of a timed segment (the parent stamps the messages as they arrive; ``sync`` waits for
the parent's "go", so the segment starts when the parent says).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

_PKG = Path(__file__).resolve().parent.parent  # avo_inductor/
# Files whose code decides a verdict; any change between worker starts is tamper evidence.
HARNESS_FILES = ("check/sandbox.py", "check/run.py", "check/cases.py", "check/judge.py", "check/tolerance.py",
                 "search/evaluate.py", "search/bench.py", "search/types.py", "kernels/grammar.py",
                 "kernels/grammar_vocab.py", "kernels/grammar_text.py", "kernels/loader.py", "kernels/launch.py",
                 "kernels/operands.py", "kernels/reference.py", "artifact.py", "parsing.py", "spec.py")
DEFAULT_HANDLER = "avo_inductor.check.run:handle_request"
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "LD_LIBRARY_PATH", "USER",
             "VIRTUAL_ENV", "XDG_CACHE_HOME")
_ENV_KEEP_PREFIXES = ("TRITON_", "CUDA_", "NVIDIA_", "TORCHINDUCTOR_", "OMP_", "MKL_", "NCCL_")
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSW", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")
STDERR_TAIL_CHARS = 3000


def harness_sha256(files: Sequence[str] = HARNESS_FILES) -> str:
    """sha256 over the harness files (name + bytes; a missing file hashes as absent)."""
    h = hashlib.sha256()
    for rel in files:
        path = _PKG / rel
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"<absent>")
        h.update(b"\0")
    return h.hexdigest()


def scrubbed_env(device: str, base: dict[str, str] | None = None, work_dir: str | None = None) -> dict[str, str]:
    """The environment a worker gets: an allowlist of harmless variables, never anything that looks secret.

    ``device`` "cpu" turns on the Triton interpreter; "cuda:N" pins the worker to the parent's N-th visible GPU.
    ``work_dir`` becomes the worker's AVO_CACHE_DIR (where the loader writes candidate sources), private to it.
    """
    base = dict(os.environ if base is None else base)
    env = {}
    for name, value in base.items():
        if any(marker in name.upper() for marker in _SECRET_MARKERS) or name.upper().startswith("ANTHROPIC"):
            continue
        if name in _ENV_KEEP or name.startswith(_ENV_KEEP_PREFIXES):
            env[name] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PKG.parent), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["AVO_USE_SHIPPED"] = "0"
    if work_dir is not None:
        env["AVO_CACHE_DIR"] = work_dir
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    else:
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        # "cuda:N" is the parent's N-th visible GPU: map it through the parent's own CUDA_VISIBLE_DEVICES so a
        # user who restricted GPUs (CUDA_VISIBLE_DEVICES=2,3) gets workers on 2 and 3, not on 0 and 1.
        if "CUDA_VISIBLE_DEVICES" in base:  # set, even to "" (no GPU): map through it, never around it
            visible = [v.strip() for v in base["CUDA_VISIBLE_DEVICES"].split(",") if v.strip()]
            if index >= len(visible):
                raise ValueError(f"{device}: the parent sees only "
                                 f"CUDA_VISIBLE_DEVICES={base['CUDA_VISIBLE_DEVICES']!r}")
            env["CUDA_VISIBLE_DEVICES"] = visible[index]
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
        env.pop("TRITON_INTERPRET", None)
    return env


class HarnessTampered(RuntimeError):
    """A restarted worker's harness files hash differently from the pool's first worker: stop evaluating."""


@dataclass(frozen=True)
class WorkerReply:
    """status: "ok" (payload holds the handler's reply), "timeout" or "crash" (stderr_tail says why)."""

    status: str
    payload: dict[str, Any]
    last_progress: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0
    marks: tuple[tuple[str, float], ...] = ()  # (tag, parent monotonic time: a mark's arrival, a sync's "go")


class Worker:
    """One sandboxed subprocess; ``request`` never raises for a misbehaving candidate, it restarts the worker."""

    def __init__(self, device: str, handler: str = DEFAULT_HANDLER, start_timeout_s: float = 180.0,
                 expected_harness: str | None = None) -> None:
        self.device, self.handler, self.start_timeout_s = device, handler, start_timeout_s
        self.expected_harness = expected_harness
        self.proc: subprocess.Popen[bytes] | None = None
        self.hello: dict[str, Any] = {}
        self.restarts = -1
        self._buf = b""
        self._stderr = tempfile.TemporaryFile()
        self._work_dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        """Start a worker process in a new private folder (its AVO_CACHE_DIR, where the loader writes kernel
        sources): nothing a previous process of this Worker left on disk is visible to the next."""
        self.close()
        self._buf = b""
        if self._work_dir is not None:
            self._work_dir.cleanup()
        self._work_dir = tempfile.TemporaryDirectory(prefix="avo-worker-")
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "avo_inductor.check.sandbox", "--worker", self.handler, self.device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=scrubbed_env(self.device, work_dir=self._work_dir.name), cwd=self._work_dir.name,
            start_new_session=True)
        self.restarts += 1
        msg = self._read_message(time.monotonic() + self.start_timeout_s)
        if msg is None or "hello" not in msg:
            tail = self._stderr_tail(0)
            self.close()
            raise RuntimeError(f"evaluation worker on {self.device} failed to start: {tail or msg}")
        self.hello = msg["hello"]
        if self.expected_harness is None:
            self.expected_harness = self.hello["harness_sha256"]
        elif self.hello["harness_sha256"] != self.expected_harness:
            got = self.hello["harness_sha256"]
            self.close()
            raise HarnessTampered(f"harness files changed since the pool started (tamper evidence): "
                               f"{self.expected_harness[:12]}… -> {got[:12]}…; refusing to evaluate")

    def request(self, message: dict[str, Any], timeout_s: float) -> WorkerReply:
        """Send one request; wait at most ``timeout_s`` for the reply, SIGKILL + restart on timeout or crash."""
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.start()
            except HarnessTampered:
                raise
            except Exception as exc:  # a worker that cannot start (GPU stuck after a fault) costs this candidate
                return WorkerReply("crash", {"exit_code": None}, "", f"worker failed to start: {exc}", 0.0)
        assert self.proc is not None and self.proc.stdin is not None
        t0 = time.monotonic()
        self._stderr.seek(0, os.SEEK_END)
        err_offset = self._stderr.tell()
        progress = ""
        marks: list[tuple[str, float]] = []
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker died; reading below reports the crash
        deadline = t0 + timeout_s
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                timed_out = time.monotonic() >= deadline and self.proc.poll() is None
                if not timed_out:  # EOF: the worker is dying; reap it to learn how
                    try:
                        self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                tail = self._stderr_tail(err_offset)
                code = self.proc.poll()
                self._kill()
                reply = WorkerReply("timeout" if timed_out else "crash", {"exit_code": code}, progress, tail,
                                    time.monotonic() - t0, tuple(marks))
                self._restart_quietly()
                return reply
            if "mark" in msg:
                marks.append((str(msg["mark"]), time.monotonic()))
                continue
            if "sync" in msg:
                try:
                    self.proc.stdin.write(b'{"op": "go"}\n')
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
                marks.append((str(msg["sync"]), time.monotonic()))
                continue
            if "progress" in msg:
                progress = str(msg["progress"])
                continue
            reply = WorkerReply("ok", msg, progress, "", time.monotonic() - t0, tuple(marks))
            if msg.get("restart"):  # e.g. a CUDA error: the context may be poisoned, start clean
                reply = WorkerReply("ok", msg, progress, self._stderr_tail(err_offset), reply.duration_s, tuple(marks))
                self._kill()
                self._restart_quietly()
            return reply

    def recycle(self) -> None:
        """Kill this worker; the next request starts a fresh process in a fresh folder (a worker that ran one
        candidate's code never serves another)."""
        self.close()

    def _restart_quietly(self) -> None:
        """Restart now so the next candidate finds a warm worker; if that fails (e.g. a GPU still stuck after a
        fault), leave it down: the next request retries and reports a failed start as that candidate's crash."""
        try:
            self.start()
        except HarnessTampered:
            raise
        except Exception:
            self._kill()

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        """Next JSON line from the worker, or None on EOF / deadline."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(timeout=min(remaining, 1.0)):
                    continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return {"progress": "garbled"}

    def _stderr_tail(self, offset: int) -> str:
        self._stderr.flush()
        self._stderr.seek(offset)
        return self._stderr.read().decode("utf-8", errors="replace")[-STDERR_TAIL_CHARS:]

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: compiler children die too
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait()

    def close(self) -> None:
        if self.proc is not None:
            self._kill()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None


class WorkerPool:
    """One Worker per device; ``map`` spreads requests over workers (one thread each) and keeps their order.

    ``affinity`` keys (the spec a request is about) steer each worker to requests whose key it has served
    before: a worker measures the built-in baselines of a spec once and caches them, so a 19-spec campaign on
    4 GPUs pays ~5 baseline measurements per worker instead of 19. A worker with nothing of its own takes an
    unclaimed key, then anything left (never idles while work remains)."""

    def __init__(self, devices: Sequence[str], handler: str = DEFAULT_HANDLER, start_timeout_s: float = 180.0) -> None:
        if not devices:
            raise ValueError("WorkerPool needs at least one device")
        self.harness = harness_sha256()
        self.workers = [Worker(d, handler, start_timeout_s, self.harness) for d in devices]
        self._served: list[set[str]] = [set() for _ in self.workers]

    def _take(self, widx: int, remaining: list[int], affinity: Sequence[str] | None) -> int | None:
        """Index of the next request for worker ``widx`` (caller holds the lock); None when none is left."""
        if not remaining:
            return None
        if affinity is not None:
            mine = self._served[widx]
            claimed = set().union(*(s for j, s in enumerate(self._served) if j != widx))
            for wanted in (lambda k: k in mine, lambda k: k not in claimed):
                for pos, i in enumerate(remaining):
                    if wanted(affinity[i]):
                        return remaining.pop(pos)
        return remaining.pop(0)

    def map(self, messages: Sequence[dict[str, Any]], timeout_s: float,
            on_reply: Callable[[int, WorkerReply], None] | None = None,
            affinity: Sequence[str] | None = None) -> list[WorkerReply]:
        if affinity is not None and len(affinity) != len(messages):
            raise ValueError(f"affinity has {len(affinity)} keys for {len(messages)} messages")
        remaining = list(range(len(messages)))
        lock = threading.Lock()
        replies: list[WorkerReply | None] = [None] * len(messages)
        errors: list[BaseException] = []

        def drain(widx: int, worker: Worker) -> None:
            while not errors:
                with lock:
                    i = self._take(widx, remaining, affinity)
                    if i is not None and affinity is not None:
                        self._served[widx].add(affinity[i])
                if i is None:
                    return
                restarts = worker.restarts
                try:
                    replies[i] = worker.request(messages[i], timeout_s)
                except BaseException as exc:  # start failure / tamper: stop every thread, re-raise below
                    errors.append(exc)
                    return
                if restarts >= 0 and worker.restarts != restarts:  # restarted (not first start): baselines gone
                    with lock:
                        self._served[widx] = set()
                if on_reply is not None:
                    on_reply(i, replies[i])  # type: ignore[arg-type]

        _run_threads([threading.Thread(target=drain, args=(j, w), daemon=True) for j, w in enumerate(self.workers)],
                     errors)
        return [r for r in replies if r is not None]

    def each(self, items: Sequence[Any], fn: Callable[[Worker, Any], Any], recycle: bool = True) -> list[Any]:
        """``fn(worker, item)`` for every item, spread over the workers (one thread each), results in order.
        With ``recycle`` each worker is killed and restarted after every item: one fresh process per candidate."""
        remaining = list(range(len(items)))
        lock = threading.Lock()
        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []

        def drain(worker: Worker) -> None:
            while not errors:
                with lock:
                    if not remaining:
                        return
                    i = remaining.pop(0)
                try:
                    results[i] = fn(worker, items[i])
                    if recycle:
                        worker.recycle()
                except BaseException as exc:  # tamper evidence or a harness bug: stop every thread
                    errors.append(exc)
                    return

        _run_threads([threading.Thread(target=drain, args=(w,), daemon=True) for w in self.workers], errors)
        return results

    def close(self) -> None:
        for w in self.workers:
            w.close()


def default_devices() -> list[str]:
    """One device per local GPU, or ["cpu"] (one interpreter worker) without CUDA."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


# ---- worker side ------------------------------------------------------------------------------------------
class Channel:
    """What a handler may say besides its reply: ``progress`` (stage name), ``mark`` (the parent stamps its
    arrival), ``sync`` (wait for the parent's "go", stamped by the parent when sent)."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send

    def progress(self, stage: str) -> None:
        self._send({"progress": stage})

    def mark(self, tag: str) -> None:
        self._send({"mark": tag})

    def sync(self, tag: str) -> None:
        self._send({"sync": tag})
        line = sys.stdin.readline()
        if not line or json.loads(line).get("op") != "go":
            raise RuntimeError(f"sync {tag!r}: expected the parent's go, got {line[:80]!r}")


def diagnostic_handler(message: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """A handler for testing the sandbox itself: ping (env names), sleep, crash (SIGSEGV), raise, print, sync."""
    op = message.get("op")
    if op == "sleep":
        channel.progress("sleeping")
        time.sleep(float(message["seconds"]))
    elif op == "crash":
        sys.stderr.write("diagnostic crash requested\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    elif op == "print":
        print("stray stdout from kernel land")  # must not corrupt the protocol
    elif op == "sync":
        channel.sync("start")
        time.sleep(float(message.get("seconds", 0.0)))
        channel.mark("end")
    return {"ok": True, "env_keys": sorted(os.environ), "pid": os.getpid()}


def worker_main(handler_name: str, device: str) -> None:
    """Serve requests on stdin; replies on a private dup of stdout, while fd 1 is redirected to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    if not handler_name.startswith("avo_inductor."):
        raise SystemExit(f"refusing handler outside the package: {handler_name!r}")
    module, _, func = handler_name.partition(":")
    handler = getattr(importlib.import_module(module), func)

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    harness = harness_sha256()  # hashed once, before any candidate ran in this process
    send({"hello": {"pid": os.getpid(), "device": device, "harness_sha256": harness}})
    while True:
        line = sys.stdin.readline()  # readline, not iteration: Channel.sync reads the same stream
        if not line:
            return
        if not line.strip():
            continue
        message = json.loads(line)
        if message.get("op") == "exit":
            return
        message["worker_harness"] = harness
        send(handler(message, Channel(send)))


def _run_threads(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    """Start the pool's drain threads, wait for all, and re-raise the first error one of them recorded."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m avo_inductor.check.sandbox --worker <handler> <device>")

