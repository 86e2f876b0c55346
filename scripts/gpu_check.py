#!/usr/bin/env python
"""The command line of :mod:`memmaml.cli.gpu_check` (``--help`` says what it does)."""

from memmaml.cli.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
