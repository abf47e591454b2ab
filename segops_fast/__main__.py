"""``python -m segops_fast`` is the ``segops-fast`` command."""

from ._cli import main

raise SystemExit(main())
