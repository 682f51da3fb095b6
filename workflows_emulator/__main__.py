"""``python -m workflows_emulator``: see workflows_emulator/cli.py."""

from workflows_emulator.cli import main

raise SystemExit(main())
