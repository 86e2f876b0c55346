"""The command-line layer: memmaml's programs, each a ``main(argv=None) -> int``.

* :mod:`memmaml.cli.compare_memory` (``memmaml-compare``,
  ``scripts/compare_memory.py``) -- the main job: memory and time of every
  engine against naive MAML, and the longest unroll each fits a budget;
* :mod:`memmaml.cli.gpu_check` (``memmaml-gpu-check``,
  ``scripts/gpu_check.py``) -- memmaml's GPU predictions measured on a CUDA
  device, in one command;
* :mod:`memmaml.cli.meta_train` (``memmaml-train``, ``scripts/meta_train.py``)
  -- meta-training from the command line.

This layer sits on top of everything: it may import memmaml's public API
(``memmaml.__all__``), :mod:`memmaml.bench`, :mod:`memmaml.models` and
:mod:`memmaml.tasks`, never a private ``memmaml._*`` module
(``tests/test_bench_imports.py``), and nothing imports it. Every flag is
checked at the edge, by an argparse ``type=`` (:mod:`memmaml.cli._types`) or
by a check that runs before any work: a bad value reads ``error: argument
--flag: ...`` with exit status 2, and nothing is written.
"""
