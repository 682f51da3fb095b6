"""``python -m devstack.workflows``: see devstack/workflows/cli.py."""

from devstack.workflows.cli import main

raise SystemExit(main())
