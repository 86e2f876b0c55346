#!/usr/bin/env python
"""The command line of :mod:`memmaml.cli.compare_memory` (``--help`` says what it does)."""

from memmaml.cli.compare_memory import main

if __name__ == "__main__":
    raise SystemExit(main())
