"""avo_inductor: a torch.compile backend that runs evolved Triton attention kernels.

``torch.compile(model, backend="avo")`` works once the package is installed (entry point). Public API:
``configure``, ``explain``, ``AttentionSpec``, ``HardwareKey``, ``SoftwareKey``, ``avo_backend``, and for tools
``kernel_for(spec, source="store"|"baseline"|"auto")`` -> ``KernelHandle`` (the kernel for a spec, registered).
"""
from __future__ import annotations

from typing import Any

from .settings import Settings, configure, get_settings
from .spec import AttentionSpec, HardwareKey, MaskKind, SoftwareKey
from .version import __version__ as __version__  # re-exported

__all__ = [
    "AttentionSpec", "HardwareKey", "KernelHandle", "MaskKind", "Settings", "SoftwareKey",
    "avo_backend", "configure", "explain", "get_settings", "kernel_for",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing the backend pulls in torch._inductor, which users of the CLI tools need not pay for.
    if name == "avo_backend":
        from .backend.register import avo_backend

        return avo_backend
    if name == "explain":
        from .backend.explain import explain

        return explain
    if name in ("kernel_for", "KernelHandle"):
        from .backend import api

        return getattr(api, name)
    raise AttributeError(f"module 'avo_inductor' has no attribute {name!r}")
