"""The three command lines check every flag at the edge: a bad value gives argparse's usage line and one
``error: argument --flag: ...`` line, exit status 2, no traceback, and nothing written to --out. Also: --help shows
each default once and as typed, names are read in any case, the device is chosen and printed, and meta_train's
--iterations 0 writes the checkpoint it documents. Every case runs ``main(argv)`` in this process."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from memmaml.bench import Runner
from memmaml.cli import _types as t
from memmaml.cli import compare_memory, gpu_check, meta_train

MAINS = {"compare": compare_memory.main, "gpu": gpu_check.main, "train": meta_train.main}
PROGS = {"compare": "memmaml-compare", "gpu": "memmaml-gpu-check", "train": "memmaml-train"}
NO_CUDA = not torch.cuda.is_available()

# (command, arguments, the flag the error names, a piece of the message); {out} is the output folder, {dir} an
# existing empty folder, {file} an existing file
BAD = [
    # the main job
    ("compare", ["--repeats", "-1"], "--repeats", "must be a whole number >= 0, got '-1'"),
    ("compare", ["--timeout", "-5"], "--timeout", "must be a finite number > 0, got '-5'"),
    ("compare", ["--threads", "-2"], "--threads", "must be a whole number >= 1, got '-2'"),
    ("compare", ["--max-run-seconds", "-5"], "--max-run-seconds", "must be a finite number > 0"),
    ("compare", ["--peer-checkpoint-steps", "0"], "--peer-checkpoint-steps", "must be a whole number >= 1"),
    ("compare", ["--engines", ",,"], "--engines", "expected engines separated by commas, got ',,'"),
    ("compare", ["--engines", "uniform:five"], "--engines", "uniform:K needs K (steps per segment) >= 1, got 'five'"),
    ("compare", ["--engines", "naive,revolve:3"], "--engines", "unknown engine 'revolve:3'; use one of 'naive'"),
    ("compare", ["--engines", "naive,NAIVE"], "--engines", "'naive' is given twice"),
    ("compare", ["--engines", "naive+offload"], "--engines", "the naive unroll stores no states to offload"),
    ("compare", ["--lr", "nan"], "--lr", "must be a finite number > 0, got 'nan'"),
    ("compare", ["--device", "tpu"], "--device", "unknown device 'tpu'; use cpu, cuda or cuda:N"),
    ("compare", ["--steps", "1,x"], "--steps", "expected whole numbers >= 1 separated by commas, got '1,x'"),
    ("compare", ["--steps", "1,,2"], "--steps", "separated by commas, got '1,,2'"),
    ("compare", ["--budget", "11 parsecs"], "--budget", "cannot read '11 parsecs' as a memory size"),
    ("compare", ["--budget", "0"], "--budget", "a memory size must be positive, got '0'"),
    ("compare", ["--model", "vgg16"], "--model", "invalid choice: 'vgg16'"),
    ("compare", ["--peers", "learn2learn"], "--peers", "unknown name 'learn2learn'; choose from torch_maml"),
    ("compare", ["--batch-size", "0"], "--batch-size", "must be a whole number >= 1, got '0'"),
    ("compare", ["--max-grad-grad-norm", "inf"], "--max-grad-grad-norm", "must be a finite number >= 0"),
    ("compare", ["--steps", "1,2", "--time-steps", "4"], "--time-steps", "4 is not one of --steps 1,2"),
    ("compare", ["--out", "{file}"], "--out", "is a file, not a folder"),
    ("compare", ["--out", "{file}/x"], "--out", "/a-file', which is a file, not a folder"),
    ("compare", ["--render-only"], "--out", "--render-only needs"),
    # one rule for every list of things to run: none twice, in any spelling
    ("compare", ["--steps", "2,2"], "--steps", "'2' is given twice in '2,2'"),
    ("compare", ["--steps", "1,2", "--time-steps", "2,02"], "--time-steps", "'2' is given twice in '2,02'"),
    ("compare", ["--peers", "higher,HIGHER"], "--peers", "'higher' is given twice in 'higher,HIGHER'"),
    ("compare", ["--engines", "uniform:5,uniform:05"], "--engines", "'uniform:5' is given twice"),
    (
        "compare",
        ["--engines", "auto:1GiB,auto:1024MiB"],
        "--engines",
        "'auto:1024MiB' is given twice in 'auto:1GiB,auto:1024MiB' (the same engine as 'auto:1GiB')",
    ),
    ("compare", ["--engines", "auto:1GiB+offload,naive,auto:1073741824+offload"], "--engines", "given twice"),
    (
        "compare",
        ["--peers", "torch_maml,torch_maml:checkpoint"],
        "--peers",
        "'torch_maml:checkpoint' runs torch_maml uniform:5, which 'torch_maml' runs too: name one of them",
    ),
    # the GPU check
    ("gpu", ["--smoke", "--time-budget", "0"], "--time-budget", "must be a finite number > 0, got '0'"),
    ("gpu", ["--smoke", "--cap", "1GiB"], "--cap", "a --smoke run is uncapped at toy sizes; leave it out"),
    ("gpu", ["--smoke", "--auto-budget", "1GiB"], "--auto-budget", "a --smoke run is uncapped"),
    ("gpu", ["--cap", "eleven"], "--cap", "cannot read 'eleven' as a memory size"),
    ("gpu", ["--smoke", "--parts", "naive,revolve"], "--parts", "unknown name 'revolve'; choose from naive"),
    ("gpu", ["--smoke", "--device", "tpu"], "--device", "unknown device 'tpu'"),
    ("gpu", ["--smoke", "--out", ""], "--out", "expected a folder, got ''"),
    ("gpu", ["--smoke", "NO-OUT"], "--out", "required, and not given"),
    ("gpu", ["--smoke", "--out", "{file}/x"], "--out", "which is a file, not a folder"),
    ("gpu", ["--smoke", "--parts", "naive,NAIVE"], "--parts", "'naive' is given twice in 'naive,NAIVE'"),
    ("gpu", ["--cap", "2GiB", "--auto-budget", "3GiB"], "--auto-budget", "3.0 GiB is more than --cap 2.0 GiB"),
    ("gpu", ["--cap", "1GiB"], "--cap", "1.0 GiB leaves nothing of the default --auto-budget"),
    # meta-training
    ("train", ["--inner-steps", "0"], "--inner-steps", "must be a whole number >= 1, got '0'"),
    ("train", ["--meta-batch-size", "0"], "--meta-batch-size", "must be a whole number >= 1, got '0'"),
    ("train", ["--eval-steps", "0,one"], "--eval-steps", "expected whole numbers >= 0 separated by commas"),
    ("train", ["--hidden", "40,x"], "--hidden", "expected whole numbers >= 1 separated by commas, got '40,x'"),
    ("train", ["--device", "tpu"], "--device", "unknown device 'tpu'; use cpu, cuda or cuda:N"),
    ("train", ["--outer-lr", "-1"], "--outer-lr", "must be a finite number >= 0, got '-1'"),
    ("train", ["--threads", "0"], "--threads", "must be a whole number >= 1, got '0'"),
    ("train", ["--iterations", "-5"], "--iterations", "must be a whole number >= 0, got '-5'"),
    ("train", ["--outer-optimizer", "adamx"], "--outer-optimizer", "'adamx' is not a torch.optim optimizer"),
    ("train", ["--outer-optimizer", "lbfgs"], "--outer-optimizer", "'lbfgs': LBFGS cannot meta-train here: its step"),
    ("train", ["--outer-optimizer", "SparseAdam"], "--outer-optimizer", "SparseAdam cannot meta-train here"),
    ("train", ["--outer-optimizer", "muon"], "--outer-optimizer", "Muon cannot meta-train here: it takes 2-D"),
    ("train", ["--out", "{file}/x"], "--out", "which is a file, not a folder"),
    ("train", ["--task", "omniglot", "--data-root", "{file}/x"], "--data-root", "which is a file, not a folder"),
    ("train", ["--eval-steps", "0,1,1"], "--eval-steps", "'1' is given twice in '0,1,1'"),
    ("train", ["--engine", "binomial:auto"], "--engine", "chooses its slots for a memory budget: use auto:BUDGET"),
    ("train", ["--vectorize", "--engine", "uniform:2"], "--vectorize", "vmap runs the naive unroll"),
    ("train", ["--model", "conv"], "--model", "conv needs image tasks"),
    ("train", ["--task", "omniglot"], "--data-root", "--task omniglot reads its images from a folder"),
    ("train", ["--task", "omniglot", "--data-root", "{out}/nowhere"], "--data-root", "does not exist"),
    ("train", ["--task", "omniglot", "--data-root", "{dir}"], "--data-root", "omniglot-py"),
    ("train", ["--resume"], "--resume", "no checkpoint at"),
    ("train", ["--task", "synthetic", "NO-OUT"], "--out", "required, and not given"),
    ("train", ["--num-ways", "50", "--task", "synthetic"], "--num-ways", "is more than the"),
    ("train", ["--preset", "omniglot-5w2s"], "--preset", "unknown preset 'omniglot-5w2s'; choose from omniglot-5w1s"),
    ("train", ["--preset", "omniglot-5w1s"], "--data-root", "--task omniglot reads its images from a folder"),
    ("train", ["--task", "miniimagenet", "--data-root", "{dir}"], "--data-root", "miniImageNet not found under"),
    ("train", ["--task", "fc100", "--data-root", "{dir}"], "--data-root", "pass --download (needs a network)"),
    ("train", ["--task", "cifar-fs", "--data-root", "{file}"], "--data-root", "is a file, not a folder"),
    ("train", ["--task", "miniimagenet", "--data-root", "{dir}", "--download"], "--download", "has no download"),
    ("train", ["--task", "digits", "--download"], "--download", "digits ship inside scikit-learn"),
    ("train", ["--task", "digits", "--eval-split", "val"], "--eval-split", "digits have no val classes"),
    ("train", ["--eval-split", "test"], "--eval-split", "--task sinusoid has no named splits"),
    ("train", ["--eval-split", "train", "--task", "digits"], "--eval-split", "invalid choice: 'train'"),
    ("train", ["--task", "synthetic", "--rotations"], "--rotations", "only omniglot, digits, imagefolder images"),
    ("train", ["--task", "digits", "--eval-num-query", "0"], "--eval-num-query", "must be a whole number >= 1"),
    ("train", ["--task", "digits", "--num-shots", "170", "--num-query", "15"], "--num-shots", "fewer than"),
]
if NO_CUDA:
    BAD += [
        ("compare", ["--device", "cuda"], "--device", "'cuda': no CUDA device here"),
        ("gpu", [], "--device", "no CUDA device (cpu): run on a machine with a GPU, or pass --smoke"),
        ("train", ["--device", "cuda:1"], "--device", "'cuda:1': no CUDA device here"),
    ]


def _argv(command, args, out, folder, file):
    if "NO-OUT" in args:
        return [a for a in args if a != "NO-OUT"]
    args = [a.format(out=out, dir=folder, file=file) for a in args]
    if command == "train":
        return ["--iterations", "1", "--no-progress", "--out", str(out), *args]
    if "--out" in args:
        return args
    return ["--out", str(out), *args] if command != "compare" else [*args, "--out", str(out)]


@pytest.mark.parametrize("command, args, flag, message", BAD, ids=[f"{c} {' '.join(a)}" for c, a, _, _ in BAD])
def test_a_bad_value_is_one_error_line_with_exit_status_2(command, args, flag, message, tmp_path, capsys):
    out, folder, file = tmp_path / "out", tmp_path / "empty", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        MAINS[command](_argv(command, args, out, folder, file))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    usage, error = (line for line in err.splitlines() if not line.startswith("device: "))
    assert usage == f"usage: {PROGS[command]} [-h] " + ("[options]" if command == "compare" else "--out OUT [options]")
    assert error.startswith(f"{PROGS[command]}: error: argument {flag}: ") and message in error, error
    assert not out.exists()  # nothing written
    assert str(exit_info.value) == error.split(": error: ", 1)[1]  # in-process callers can read the message


def test_the_matrix_covers_the_three_commands():
    counts = {command: sum(1 for c, *_ in BAD if c == command) for command in MAINS}
    assert sum(counts.values()) >= 25 and min(counts.values()) >= 7, counts


@pytest.mark.parametrize("command", ["compare", "gpu", "train"])
def test_help_shows_each_default_once_as_typed(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no line wrapped inside a default
    with pytest.raises(SystemExit) as exit_info:
        MAINS[command](["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for option in (chunk.split("\n\n")[0] for chunk in options):  # a group's title or the epilog may follow
        assert option.count("default") <= 1, option
        assert "default: None" not in option and "default: False" not in option and "[" not in option.split("\n")[0][2:]
    assert "Traceback" not in text
    parser = {"compare": compare_memory, "gpu": gpu_check, "train": meta_train}[command].build_parser()
    assert all(action.help for action in parser._actions)  # every flag says what it is (and so its default)
    text = " ".join(text.split())
    if command == "compare":
        assert "(default: 1,2,4)" in text and "(default: naive,uniform:5,uniform:best,binomial:auto," in text
        assert "(default: 11GiB)" in text and "pip install torch-maml" in text
        assert "--threads THREADS torch threads per run (default: 1 on a CPU" in text
    if command == "gpu":
        assert "--out OUT " in text and "(default: 11GiB; not with --smoke" in text  # required: no default shown
        assert "[--out" not in text and "usage: memmaml-gpu-check [-h] --out OUT [options]" in text
    if command == "train":
        assert "(default: 40,40)" in text and "(default: Adam)" in text


def test_names_are_read_in_any_case(tmp_path):
    args = compare_memory.build_parser().parse_args(
        ["--model", "MLP", "--optimizer", "SGD", "--engines", "NAIVE,Uniform:2,Binomial:AUTO+Offload,auto:1GiB"]
    )
    assert (args.model, args.optimizer) == ("mlp", "sgd")
    assert args.engines == ["naive", "uniform:2", "binomial:auto+offload", "auto:1GiB"]
    assert compare_memory.build_parser().parse_args(["--device", "CPU", "--peers", "Higher"]).device == "cpu"
    train = meta_train.build_parser().parse_args(
        ["--out", str(tmp_path), "--outer-optimizer", "adam", "--inner-optimizer", "RMSProp", "--task", "Sinusoid"]
    )
    assert (train.outer_optimizer, train.inner_optimizer, train.task) == ("Adam", "rmsprop", "sinusoid")
    assert meta_train.build_parser().parse_args(["--out", "x", "--outer-optimizer", "SGD"]).outer_optimizer == "SGD"
    assert gpu_check.build_parser().parse_args(["--out", "x", "--parts", "OFFLOAD,Naive"]).parts == ["naive", "offload"]


def test_type_functions():
    assert t.positive_int_list("4, 1") == [4, 1] and t.non_negative_int_list("0,1") == [0, 1]
    assert t.positive_int_sequence("40, 40") == [40, 40]  # sizes repeat; a list of things to run does not:
    with pytest.raises(Exception, match=re.escape("'4' is given twice in '4, 1,4'")):
        t.positive_int_list("4, 1,4")
    assert t.size("1.5 KiB") == 1536 and t.positive_float("1e-3") == 0.001 and t.non_negative_int(" 0 ") == 0
    assert t.engine("sqrt") == "sqrt" and t.engine(" uniform:05 ") == "uniform:5"
    assert t.engine("Binomial:03:2 +offload") == "binomial:3:2+offload" and t.engine("binomial:3:1") == "binomial:3"
    with pytest.raises(Exception, match=re.escape("'binomial:3:2' is given twice in 'binomial:3:2,binomial:3:02'")):
        t.engine_list("binomial:3:2,binomial:3:02")
    for text, message in (
        ("binomial:3:0", "binomial:SLOTS:SEGMENT needs SEGMENT (steps per segment) >= 1, got '0'"),
        ("binomial:3:x", "got 'x'"),
        ("binomial:3:2:1", "got '2:1'"),
        ("uniform:3:2", "got '3:2'"),
    ):
        with pytest.raises(Exception, match=re.escape(f"{text!r}: {message}" if "needs" in message else message)):
            t.engine(text)
    assert t.device("auto") == t.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    for function, text in ((t.positive_int, "1.5"), (t.positive_float, "-inf"), (t.engine, "binomial:0")):
        with pytest.raises(Exception, match=re.escape(repr(text))):
            function(text)


def test_meta_train_iterations_0_writes_the_untrained_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--iterations", "0", "--hidden", "4", "--meta-batch-size", "2", "--num-eval-tasks", "2"]
    assert meta_train.main([*argv, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 0 and summary["final_eval"] is None
    assert capsys.readouterr().err.startswith("device: cpu\n")
    with pytest.raises(SystemExit, match="exists: pass --resume"):
        meta_train.main([*argv, "--no-progress", "--out", str(out)])
    assert meta_train.main([*argv, "--no-progress", "--out", str(out), "--resume"]) == 0  # nothing to do
    longer = ["--iterations", "2", *argv[2:]]
    assert meta_train.main([*longer, "--no-progress", "--out", str(out), "--resume"]) == 0
    with pytest.raises(SystemExit) as exit_info:  # --iterations counts the whole run
        meta_train.main([*argv, "--no-progress", "--out", str(out), "--resume"])
    assert "argument --iterations: 0 is fewer than the 2 iterations" in str(exit_info.value)


def test_an_out_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    """--out in a folder this process may not write: one error line, exit status 2, in all three commands."""
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = t.os.access

    def no_work(*args, **kwargs):
        raise AssertionError("the command started work in a folder it cannot write")

    monkeypatch.setattr(Runner, "run", no_work)  # a missing check fails here at once, not after a whole sweep
    monkeypatch.setattr(gpu_check, "probe_device", no_work)
    monkeypatch.setattr(meta_train, "build_sources", no_work)
    if os.geteuid() == 0:  # root may write anywhere: take the folder's mode bits at their word, as a user would
        monkeypatch.setattr(
            t.os, "access", lambda path, mode: not (Path(path) == locked and mode & os.W_OK) and real_access(path, mode)
        )
    try:
        for command, args in (
            ("compare", ["--out", str(locked / "run")]),
            ("gpu", ["--smoke", "--out", str(locked / "run")]),
            ("train", ["--iterations", "1", "--out", str(locked / "a" / "b")]),
            ("train", ["--iterations", "1", "--out", str(locked)]),
        ):
            with pytest.raises(SystemExit) as exit_info:
                MAINS[command](args)
            assert exit_info.value.code == 2
            error = capsys.readouterr().err.strip().splitlines()[-1]
            assert error.startswith(f"{PROGS[command]}: error: argument --out: "), error
            assert "is not writable" in error and "Traceback" not in error
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_list_flags_and_the_hidden_sizes(tmp_path):
    """Lists of things to run refuse repeats (test_a_bad_value...); --hidden is layer sizes: 40,40 is two layers."""
    args = meta_train.parse_args(["--hidden", "8,8,8", "--out", str(tmp_path)])
    source = meta_train.build_sources(args, torch.float32)[0]
    model = meta_train.build_model(args, source)
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [8, 8, 8, 1]
    assert compare_memory.build_parser().parse_args(["--steps", "4,1"]).steps == [4, 1]  # in the order given


def test_an_outer_optimizer_that_cannot_step_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    class Closure(torch.optim.SGD):  # an optimizer whose step needs what the trainer does not give
        def step(self, closure):
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Closure", Closure, raising=False)
    monkeypatch.setitem(meta_train.OUTER_OPTIMIZERS, "closure", "Closure")
    out = tmp_path / "run"
    argv = ["--outer-optimizer", "closure", "--iterations", "1", "--hidden", "4", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        meta_train.main(argv)
    assert exit_info.value.code == 2 and not out.exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("memmaml-train: error: argument --outer-optimizer: Closure cannot step this model: ")
    assert "TypeError" in error and "closure" in error
    for name in ("LBFGS", "SparseAdam", "Muon"):
        assert name.lower() not in meta_train.OUTER_OPTIMIZERS
    assert meta_train.main([*argv[2:], "--outer-optimizer", "adamw"]) == 0  # the others step


def test_the_gpu_check_numbers_devices_as_its_children_before_checking_one(tmp_path, monkeypatch):
    seen = []

    def device(text):
        seen.append(os.environ.get("CUDA_DEVICE_ORDER"))
        return "cpu"

    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    monkeypatch.setattr(t, "device", device)
    gpu_check.parse_args(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    assert seen == ["PCI_BUS_ID"] and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setattr(t, "device", lambda text: "cuda:0")  # a CUDA machine's answer, without asking CUDA
    args = gpu_check.parse_args(["--cap", "4GiB", "--device", "cuda:0", "--out", str(tmp_path)])
    assert args.cap == 4 * 2**30 and args.auto_budget == 3 * 2**30  # the cap less 1 GiB
    args = gpu_check.parse_args(
        ["--cap", "4GiB", "--auto-budget", "4GiB", "--device", "cuda:0", "--out", str(tmp_path)]
    )
    assert args.auto_budget == 4 * 2**30  # up to the cap itself
