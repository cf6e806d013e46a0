"""One-question GPU probes (see README.md here), run as ``python -m benchmarks.probes.<name>``."""
