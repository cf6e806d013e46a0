"""Kernel storage: KernelStore with read-only bundle layers and the pending queue (store.py, layers.py), bundle
export/import/verify/sign (bundle.py, manifest.py, signing.py), and the ``python -m avo_inductor.cache`` CLI.
The records themselves are ``avo_inductor.artifact.KernelRecord``. Import the submodules directly; this package
re-exports nothing."""
