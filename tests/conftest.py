"""Suite-wide set-up: Triton's CPU interpreter, an isolated kernel store per test, fresh settings.

TRITON_INTERPRET must be set before triton is first imported, so it is set here at collection time.
"""
from __future__ import annotations

import os

def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# CPU: Triton kernels run in the interpreter. GPU (-m gpu): real kernels; wrap_triton refuses interpreted ones.
os.environ.setdefault("TRITON_INTERPRET", "0" if _has_cuda() else "1")
os.environ.pop("ANTHROPIC_API_KEY", None)

import pytest  # noqa: E402
import torch  # noqa: E402


def _register_backend_for_a_checkout() -> None:
    """``backend="avo"`` comes from the package's torch_dynamo_backends entry point, which only an installed
    package has (make install does ``pip install -e``). A bare checkout on PYTHONPATH (a GPU host's copy of the
    tree) registers the same function here, so the backend tests test the backend rather than the installation."""
    if "avo" not in torch._dynamo.list_backends(exclude_tags=()):
        from avo_inductor.backend.register import avo_backend

        torch._dynamo.register_backend(avo_backend, name="avo")


_register_backend_for_a_checkout()


@pytest.fixture(autouse=True)
def isolated_avo(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own writable store and no shipped bundles unless it asks for them."""
    from avo_inductor.settings import reset_settings

    cache_dir = tmp_path_factory.mktemp("avo-cache")
    monkeypatch.setenv("AVO_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("AVO_USE_SHIPPED", "0")
    for name in ("AVO_CACHE_PATH", "AVO_ON_MISS", "AVO_STRICT", "AVO_LOG", "AVO_TRUSTED_KEYS", "AVO_REQUIRE_SIGNED",
                 "AVO_REMOTE_CACHE", "AVO_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    reset_settings()
    torch._dynamo.reset()
    yield cache_dir
    reset_settings()


@pytest.fixture
def seeded() -> torch.Generator:
    """A fresh generator per test: inputs are random and differ between tests, never zeros."""
    g = torch.Generator()
    g.seed()
    return g
