#!/usr/bin/env python
"""The command line of :mod:`memmaml.cli.meta_train` (``--help`` says what it does)."""

from memmaml.cli.meta_train import main

if __name__ == "__main__":
    raise SystemExit(main())
