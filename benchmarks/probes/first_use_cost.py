"""Where does a hit's first-use verification spend its time? Per case, on a cold Triton cache (issue 21: pass time).

For every record of the shipped bundle for this GPU, times ``load_record`` and each verification case
(check/cases.py ``verification_cases``: run on the GPU, judged against float64), at the record's own shape and at a
class neighbour's (half the lengths, as a class hit would verify). The first case pays the Triton compile of every
specialisation it hits; later cases pay again only for new ones (lengths of 1, or no longer a multiple of 16).
Run with a fresh TRITON_CACHE_DIR to see a new host's cost.
Usage (GPU): TRITON_CACHE_DIR=$(mktemp -d) python -m benchmarks.probes.first_use_cost
"""
from __future__ import annotations

import dataclasses
import random
import time

import torch

from avo_inductor.cache.layers import iter_layer_records, open_layers
from avo_inductor.check.cases import verification_cases
from avo_inductor.check.judge import judge_case
from avo_inductor.check.run import run_case
from avo_inductor.kernels.loader import load_record
from avo_inductor.spec import HardwareKey

from ..common import print_table

COLUMNS = ("record", "at", "case", "ms")


def _timed(fn):  # type: ignore[no-untyped-def]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, 1e3 * (time.perf_counter() - t0)


def main() -> None:
    device = torch.device("cuda")
    hardware = HardwareKey.current(device)
    rows = []
    for layer in open_layers([], shipped=True, trusted_keys=frozenset(), require_signed=False):
        for key, record, _error in iter_layer_records(layer):
            if record is None or record.hardware.name != hardware.name:
                continue
            name = record.spec.short() if hasattr(record.spec, "short") else key
            loaded, ms = _timed(lambda r=record: load_record(r))
            rows.append({"record": name, "at": "-", "case": "load_record", "ms": ms})
            half = dataclasses.replace(record.spec, q_len=max(1, record.spec.q_len // 2),
                                       kv_len=max(1, record.spec.kv_len // 2))
            for label, spec in (("own", record.spec), ("class (half)", half)):
                total = 0.0
                for case in verification_cases(spec, "cuda", random.Random(0)):
                    _, ms = _timed(lambda c=case, k=loaded: judge_case(c, run_case(k, c, device), device))
                    total += ms
                    rows.append({"record": name, "at": label, "case": case.name, "ms": ms})
                rows.append({"record": name, "at": label, "case": "TOTAL", "ms": total})
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
