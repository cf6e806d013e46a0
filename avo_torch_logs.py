"""Registers avo's ``TORCH_LOGS`` name inside ``import torch``: the ``torch.backends`` entry point of avo_inductor.

torch parses ``TORCH_LOGS`` once, inside ``import torch``, and an unknown name (``avo``) makes ``import torch`` raise.
The only hook that runs before the parse is device-backend autoload: torch calls every ``torch.backends`` entry
point on every ``import torch`` and turns any exception into a failed import. So this hook is a top-level,
stdlib-only module (importing torch never imports the avo_inductor package), it does nothing unless
``TORCH_LOGS`` names ``avo``, and it never raises. ``avo_inductor.backend.logs`` holds the rest of the logging.
"""
from __future__ import annotations

import os
import re
import sys

LOG_NAME = "avo"  # TORCH_LOGS=avo (INFO) or +avo (DEBUG)
LOGGER_NAME = "avo_inductor"  # the logger the name stands for (avo_inductor.backend.report.logger)


def names_avo(setting: str) -> bool:
    """Whether a TORCH_LOGS value names the avo log (or asks for the help listing, which should list it)."""
    names = {re.sub(r"^[+-]", "", part.strip()) for part in setting.split(",")}
    return bool(names & {LOG_NAME, "help"})


def torch_logs_hook() -> None:
    """Entry point (group ``torch.backends``): register ``avo`` with torch._logging when TORCH_LOGS asks for it."""
    try:
        if names_avo(os.environ.get("TORCH_LOGS", "")):
            from torch._logging._internal import register_log

            register_log(LOG_NAME, LOGGER_NAME)
    except Exception as exc:  # never break `import torch`; TORCH_LOGS=avo_inductor works without the name
        print(f"avo: could not register TORCH_LOGS name {LOG_NAME!r} ({type(exc).__name__}: {exc}); "
              f"use TORCH_LOGS={LOGGER_NAME}", file=sys.stderr)
