"""Entry point: ``python -m avo_inductor.search`` (see cli.py)."""
from .cli import main

raise SystemExit(main())
