"""The avo pass's per-site decisions in PyTorch's own logging: ``TORCH_LOGS=avo`` and ``TORCH_TRACE`` (tlparse).

What a third-party backend can do with ``torch._logging`` (torch 2.13, read from its source):
- ``register_log("avo", "avo_inductor")`` makes ``avo`` a TORCH_LOGS name for the ``avo_inductor`` logger. TORCH_LOGS
  is parsed once, inside ``import torch``, and an unknown name makes ``import torch`` itself raise ValueError. The
  only hook that runs before that parse is the device-backend autoload (entry-point group ``torch.backends``, called
  just before ``_init_logs``, which torch keeps in that order so that backends can register log names);
  the top-level module ``avo_torch_logs`` is that entry point (stdlib only, so that importing torch never
  imports this package). The ``torch_dynamo_backends`` entry point loads at the first compile,
  too late. ``TORCH_LOGS=avo_inductor`` (a module name) needs no registration at all.
- ``trace_structured("artifact", ...)`` writes a JSON artifact into the ``TORCH_TRACE`` log under the current compile
  id; tlparse turns it into ``avo_sites.json`` in that compile's folder. No registration needed.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from avo_torch_logs import LOG_NAME

from ..settings import Settings
from . import report as rep

TRACE_ARTIFACT = "avo_sites"  # name of the structured-trace artifact (tlparse: avo_sites.json per compile id)
_registered = False


def register_torch_logs() -> None:
    """Make ``avo`` a log name of ``torch._logging`` (``set_logs(modules={"avo": logging.INFO})``); idempotent.

    Registering alone changes nothing else: torch takes a registered logger over (its handler, propagate off)
    only at its next ``_init_logs``, i.e. when someone calls ``set_logs`` or TORCH_LOGS named it at import.
    """
    global _registered
    if _registered:
        return
    from torch._logging._internal import register_log

    register_log(LOG_NAME, rep.logger.name)
    _registered = True


def _asked_for(level: int) -> bool:
    """The avo_inductor logger's own level was set at or below ``level`` (AVO_LOG, TORCH_LOGS=avo, set_logs, or a
    user's ``setLevel``). A root logger at INFO alone does not count: one line per site per compile is opt-in."""
    return rep.logger.level != logging.NOTSET and rep.logger.isEnabledFor(level)


def emit_sites(sites: Sequence[rep.SiteReport], settings: Settings, *, in_compile: bool = True) -> None:
    """Publish one pass's decisions: INFO lines (AVO_LOG=1, TORCH_LOGS=avo), a DEBUG JSON line per site
    (TORCH_LOGS=+avo), and the ``avo_sites`` structured-trace artifact (TORCH_TRACE; tlparse).

    ``in_compile``: called inside a Dynamo compile (the artifact carries its compile id); False for decisions made
    outside one (the transformers integration), which torch would otherwise record with a stack trace.
    """
    if not sites:
        return
    if settings.log or _asked_for(logging.INFO):
        rep.log_sites(sites)
    if _asked_for(logging.DEBUG):
        for site in sites:
            rep.logger.debug("avo site detail: %s", json.dumps(site.to_dict(), sort_keys=True))
    from torch._logging import trace_structured

    trace_structured("artifact", metadata_fn=lambda: {"name": TRACE_ARTIFACT, "encoding": "json"},
                     payload_fn=lambda: [site.to_dict() for site in sites], expect_trace_id=in_compile)
