"""Entry point: ``python -m avo_inductor.search`` (the same command as the ``avo-search`` script; see cli.py)."""
from .cli import main

raise SystemExit(main())
