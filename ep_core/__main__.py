"""`python -m ep_core [SUBCOMMAND] ...`: the command line (see ep_core/cli/ and docs/cli.md).

Without a subcommand it runs the main job (ep_core/cli/main_job.py)."""
from __future__ import annotations

from ep_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
