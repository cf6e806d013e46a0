"""Side-by-side benchmarks of avo kernels and models, run as modules from the repository root
(``python -m benchmarks.attention``, ``python -m benchmarks.models`` ...); results per GPU under results/.

A package so the scripts share common.py and targets.py by relative import; it is not installed with avo_inductor
and uses only the package's public names (``avo_inductor.kernel_for`` for the kernel of a spec).
"""
