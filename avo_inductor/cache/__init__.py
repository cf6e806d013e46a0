"""Kernel storage: KernelRecord (record.py), KernelStore with read-only bundle layers and the pending queue
(store.py, layers.py), bundle export/import/verify/sign (bundle.py, manifest.py, signing.py), and the
``python -m avo_inductor.cache`` CLI. Import the submodules directly; this package re-exports nothing so that
``cache.record`` stays importable without the store's dependencies."""
