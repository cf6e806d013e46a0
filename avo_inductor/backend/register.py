"""The ``avo`` torch.compile backend: the avo pass, then Inductor's compile_fx under scoped config patches, then the
verdicts of any first-use checks the pass left running meanwhile (backend/deferred.py).

Registered through the ``torch_dynamo_backends`` entry point, so ``torch.compile(model, backend="avo")``
works after ``pip install`` without importing avo_inductor. ``mode=`` and ``options=`` mean what they mean
for ``backend="inductor"``.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from ..settings import get_settings
from . import deferred, logs
from . import report as rep
from .graph_pass import AvoMissError, PassResult, run_avo_pass

logs.register_torch_logs()  # plugin load: `avo` becomes a torch._logging name (set_logs; TORCH_LOGS needs the hook)


def _inductor_config_patches(mode: str | None, options: dict[str, Any] | None, dynamic: bool | None) -> dict[str, Any]:
    """The same patches ``torch.compile(backend="inductor", mode=..., options=...)`` would apply."""
    if not mode and not options:
        return {}
    wrapper = torch._TorchCompileInductorWrapper(mode if mode else None, dict(options or {}), dynamic)
    return dict(wrapper.config)


def _apply_pass(gm: fx.GraphModule, defer_checks: bool = False) -> PassResult | None:
    """The avo pass on ``gm`` with the user's settings, its sites logged; None when it failed (``gm`` then compiles
    with stock Inductor)."""
    settings = get_settings()
    if settings.log and not rep.logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    if settings.log:
        rep.logger.setLevel(logging.INFO)
    try:
        result = run_avo_pass(gm, settings, defer_checks=defer_checks)
    except AvoMissError:
        raise
    except Exception as exc:
        if settings.strict:
            raise
        from torch._dynamo.utils import counters

        counters["avo"]["pass_error"] += 1
        warnings.warn(f"avo: attention pass failed ({type(exc).__name__}: {exc}); compiling this graph with stock "
                      f"Inductor", RuntimeWarning, stacklevel=2)
        return None
    logs.emit_sites(result.sites, settings)
    return result


def settle_deferred_checks(result: PassResult | None) -> bool:
    """Wait for the first-use checks the pass left running (backend/deferred.py); False when one did not pass, each
    such kernel named in a warning. Its own name so that benchmarks can time the wait as part of the pass."""
    if result is None or not result.deferred:
        return True
    bad = deferred.failed(result.deferred)
    for check, why in bad:
        warnings.warn(f"avo: {deferred.describe(check)} {why}; compiling this graph again without it",
                      RuntimeWarning, stacklevel=2)
    return not bad


def avo_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *, mode: str | None = None,
                options: dict[str, Any] | None = None, **_: Any) -> Callable[..., Any]:
    """Dynamo backend: rewrite attention sites, then compile with Inductor exactly like ``backend="inductor"``."""
    from torch._inductor.compile_fx import compile_fx

    result = _apply_pass(gm, defer_checks=True)
    patches = _inductor_config_patches(mode, options, dynamic=None)
    compiled = compile_fx(gm, list(example_inputs), config_patches=patches or None)
    if not settle_deferred_checks(result):
        # A kernel failed its check while Inductor compiled: that verdict is kept, so the pass on Dynamo's graph now
        # takes the next neighbour (checked before use) or the fallback.
        if result is None or result.graph_before is None:  # deferred checks always come with the graph as given
            raise RuntimeError("avo: a kernel failed its first-use check and the graph as given was not kept")
        gm = fx.GraphModule(gm, result.graph_before)
        _apply_pass(gm)
        compiled = compile_fx(gm, list(example_inputs), config_patches=patches or None)
    # compile_fx's annotation also covers AOT mode's artifacts (paths, weights); a Dynamo backend gets a callable
    if not callable(compiled):
        raise RuntimeError(f"compile_fx returned {type(compiled).__name__}, not a callable")
    return compiled
