"""The sandbox itself: scrubbed environment, protocol hygiene, hard timeouts, crash containment, tamper evidence.

Uses the diagnostic handler (no torch import in the worker), so these run in a few seconds.
"""
from __future__ import annotations

import pytest

from avo_inductor.check.sandbox import HARNESS_FILES, WorkerPool, Worker, harness_sha256, scrubbed_env

DIAG = "avo_inductor.check.sandbox:diagnostic_handler"


def test_scrubbed_env_keeps_no_secrets():
    env = scrubbed_env("cuda:3", base={"ANTHROPIC_API_KEY": "sk-ant", "AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "t",
                                       "HF_TOKEN": "h", "PATH": "/usr/bin", "TRITON_CACHE_DIR": "/tmp/t",
                                       "CUDA_VISIBLE_DEVICES": "0,1,2,3", "TRITON_INTERPRET": "1", "RANDOM": "r"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and "TRITON_INTERPRET" not in env
    assert scrubbed_env("cuda:1", base={"CUDA_VISIBLE_DEVICES": "2,5"})["CUDA_VISIBLE_DEVICES"] == "5"
    assert scrubbed_env("cuda:1", base={})["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="sees only"):
        scrubbed_env("cuda:2", base={"CUDA_VISIBLE_DEVICES": "2,5"})
    with pytest.raises(ValueError, match="sees only"):  # set but empty: no GPU, not "every GPU"
        scrubbed_env("cuda:0", base={"CUDA_VISIBLE_DEVICES": ""})
    assert env["PATH"] == "/usr/bin" and env["TRITON_CACHE_DIR"] == "/tmp/t"
    assert not {"ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "HF_TOKEN", "RANDOM"} & set(env)
    cpu = scrubbed_env("cpu", base={"CUDA_VISIBLE_DEVICES": "0"}, work_dir="/tmp/w")
    assert cpu["TRITON_INTERPRET"] == "1" and "CUDA_VISIBLE_DEVICES" not in cpu and cpu["AVO_CACHE_DIR"] == "/tmp/w"


def test_pool_timeouts_crashes_and_order(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("SOME_SERVICE_PASSWORD", "hunter2")
    pool = WorkerPool(["cpu", "cpu"], handler=DIAG)
    try:
        msgs = [{"op": "ping"}, {"op": "print"}, {"op": "sleep", "seconds": 30}, {"op": "crash"},
                {"op": "ping"}, {"op": "ping"}]
        replies = pool.map(msgs, timeout_s=3)
        assert [r.status for r in replies] == ["ok", "ok", "timeout", "crash", "ok", "ok"]
        env_keys = set(replies[0].payload["env_keys"])
        assert "ANTHROPIC_API_KEY" not in env_keys and "SOME_SERVICE_PASSWORD" not in env_keys
        assert env_keys >= {"TRITON_INTERPRET", "AVO_CACHE_DIR"}
        assert replies[1].payload["ok"]  # a stray print() went to stderr, not into the protocol
        assert replies[2].last_progress == "sleeping" and replies[2].duration_s < 10
        assert replies[3].payload["exit_code"] == -11 and "diagnostic crash requested" in replies[3].stderr_tail
        assert sum(w.restarts for w in pool.workers) == 2  # one SIGKILL restart, one crash restart
    finally:
        pool.close()


def test_harness_hash_mismatch_refuses_to_start():
    worker = Worker("cpu", DIAG, expected_harness="0" * 64)
    with pytest.raises(RuntimeError, match="tamper evidence"):
        worker.start()
    worker.close()
    assert len(harness_sha256()) == 64 and harness_sha256() == harness_sha256()


def test_pool_affinity_prefers_served_then_unclaimed_keys_and_never_idles():
    pool = WorkerPool(["cpu", "cpu"], handler=DIAG)
    try:
        keys = ["a", "b", "a", "c", "b"]
        remaining = list(range(len(keys)))
        pool._served = [{"b"}, {"a"}]
        assert pool._take(0, remaining, keys) == 1  # its own key first
        assert pool._take(0, remaining, keys) == 4
        assert pool._take(0, remaining, keys) == 3  # then a key no other worker has served
        assert pool._take(0, remaining, keys) == 0  # then anything: a worker never idles while work remains
        assert pool._take(1, remaining, keys) == 2 and pool._take(1, remaining, keys) is None
        pool._served = [set(), set()]
        replies = pool.map([{"op": "ping"}] * 4, timeout_s=30, affinity=["x", "y", "x", "y"])
        assert [r.status for r in replies] == ["ok"] * 4
        assert set().union(*pool._served) == {"x", "y"}
        with pytest.raises(ValueError, match="affinity"):
            pool.map([{"op": "ping"}], timeout_s=30, affinity=[])
    finally:
        pool.close()


def test_parent_clocks_a_synced_segment_itself():
    """``sync`` waits for the parent's go and ``mark`` is stamped on arrival: the parent's own wall clock of the
    segment in between (here a 0.3 s sleep) cannot be shortened by the worker."""
    worker = Worker("cpu", DIAG)
    try:
        reply = worker.request({"op": "sync", "seconds": 0.3}, timeout_s=30)
        assert reply.status == "ok"
        at = dict(reply.marks)
        assert 0.3 <= at["end"] - at["start"] < 5
    finally:
        worker.close()


def test_each_gives_every_item_a_fresh_worker():
    """A worker that ran one candidate never serves another: ``each`` recycles it after every item."""
    pool = WorkerPool(["cpu"], handler=DIAG)
    try:
        seen = pool.each([0, 1, 2], lambda worker, item: (worker.request({"op": "ping"}, timeout_s=30).payload["pid"],
                                                          worker._work_dir.name))
        assert len({pid for pid, _ in seen}) == 3
        assert len({folder for _, folder in seen}) == 3  # nothing one candidate's process wrote is seen by the next
    finally:
        pool.close()


def test_harness_hash_covers_the_checker_and_tolerates_an_absent_grammar():
    assert {"check/run.py", "check/judge.py", "check/tolerance.py", "check/cases.py", "kernels/grammar.py"} <= set(HARNESS_FILES)
    assert harness_sha256(("kernels/no_such_file.py",)) != harness_sha256(("kernels/launch.py",))
