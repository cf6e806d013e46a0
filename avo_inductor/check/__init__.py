"""The one checker: every correctness verdict on a kernel (search cascade, promotion, first use, ``cache verify``
and bundle import) is made by this package, with one tolerance rule (tolerance.py).

Layout: cases.py (which shapes and seeds), run.py (worker side: run a kernel into poisoned buffers, return raw
outputs; trusted launcher code only), judge.py (parent side: references + comparison -> verdict), verify.py
(in-process, first use), isolated.py (sandboxed worker + parent verdict), sandbox.py (the workers themselves).

Training sites: a record's backward (dq, dk, dv against float64 reference gradients) is checked exactly when
its spec is a training spec, so a record serves a training site only if it was tuned (and checked) for
training; an inference record never does (cache/serving.py ``lookup_record``).
"""
