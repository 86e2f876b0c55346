"""``memmaml-train --preset``: each preset's values against Finn et al.'s table (written out here, not read from
memmaml/cli/_presets.py), explicit flags overriding them, one error line for a missing dataset or a bad name, and
end-to-end runs: digits from scikit-learn, Omniglot and miniImageNet on fixtures in their real layouts."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_datasets import write_mini_imagenet, write_omniglot

from memmaml.cli import meta_train
from memmaml.cli._presets import DIGITS_INNER_LR, DIGITS_MAX_GRAD_NORM, PRESETS

# Finn et al. 2017 (paper, section 5.2) and github.com/cbfinn/maml (main.py): the values each preset must set
FINN = {
    # name: (ways, shots, filters, inner lr, inner steps, eval steps, meta-batch, query train / test)
    "omniglot-5w1s": (5, 1, 64, 0.4, 1, "0,1,3", 32, 1, 1),
    "omniglot-5w5s": (5, 5, 64, 0.4, 1, "0,1,3", 32, 5, 5),
    "omniglot-20w1s": (20, 1, 64, 0.1, 5, "0,1,5", 16, 1, 1),
    "omniglot-20w5s": (20, 5, 64, 0.1, 5, "0,1,5", 16, 5, 5),
    "miniimagenet-5w1s": (5, 1, 32, 0.01, 5, "0,5,10", 4, 15, 1),
    "miniimagenet-5w5s": (5, 5, 32, 0.01, 5, "0,5,10", 4, 15, 5),
}
TARGETS = {
    "omniglot-5w1s": "98.7 ± 0.4%",
    "omniglot-5w5s": "99.9 ± 0.1%",
    "omniglot-20w1s": "95.8 ± 0.3%",
    "omniglot-20w5s": "98.9 ± 0.2%",
    "miniimagenet-5w1s": "48.70 ± 1.84%",
    "miniimagenet-5w5s": "63.11 ± 0.92%",
}
DATASET_PRESETS = [name for name in PRESETS if not name.startswith("digits")]
# what each missing dataset's line names: the folder to fill and what goes there
MISSING = {
    "omniglot": ["Omniglot not found under {root}/omniglot-py", "pass --download", "images_background.zip"],
    "miniimagenet": ["miniImageNet not found under {root}", "train.csv, val.csv, test.csv", "{root}/images/"],
}
# a digits run small enough for a test: every size overridden
TINY = ["--iterations", "2", "--meta-batch-size", "2", "--num-eval-tasks", "4", "--hidden", "8", "--no-progress"]


def parse(*argv):
    """The checked arguments; a dataset's folder need only exist (nothing is read)."""
    return meta_train.parse_args([*argv, "--data-root", ".", "--out", "unused"])


@pytest.mark.parametrize("name", list(FINN))
def test_each_preset_sets_finn_et_al_s_values(name):
    ways, shots, filters, lr, steps, eval_steps, meta_batch, query, eval_query = FINN[name]
    args = parse("--preset", name)
    assert args.task == name.split("-")[0] and args.model == "conv" and args.filters == filters
    assert (args.num_ways, args.num_shots, args.num_query, args.eval_num_query) == (ways, shots, query, eval_query)
    assert (args.inner_optimizer, args.inner_lr, args.inner_steps, args.eval_steps) == ("sgd", lr, steps, eval_steps)
    assert (args.outer_optimizer, args.outer_lr, args.meta_batch_size) == ("Adam", 1e-3, meta_batch)
    assert (args.iterations, args.num_eval_tasks, args.eval_split) == (60000, 600, "test")
    assert not args.first_order  # the published MAML rows are second order
    assert args.max_grad_norm is None and args.engine == "naive" and not args.download
    assert args.image_size == (28 if args.task == "omniglot" else 84)
    assert args.rotations == (args.task == "omniglot")
    assert PRESETS[name].target.startswith(f"MAML {TARGETS[name]}")


@pytest.mark.parametrize("name", ["digits-5w1s", "digits-5w5s"])
def test_digits_presets_need_no_data_root(name):
    args = meta_train.parse_args(["--preset", name, "--out", "unused"])
    assert (args.task, args.num_shots, args.data_root, args.eval_split) == ("digits", int(name[-2]), None, "test")
    assert (args.model, args.hidden, args.num_eval_tasks) == ("mlp", "64,64", 600)


@pytest.mark.parametrize("name", ["digits-5w1s", "digits-5w5s"])
def test_digits_presets_rotate_and_use_one_setting_for_maml_and_first_order(name):
    """Rotations as classes (NOTE [ The digits presets ]); the inner lr and clip chosen on training digits, the
    same for --first-order (an override of nothing else)."""
    args = meta_train.parse_args(["--preset", name, "--out", "unused"])
    assert args.rotations and not args.first_order and args.inner_steps == 1
    assert (args.inner_lr, args.max_grad_norm) == (float(DIGITS_INNER_LR), float(DIGITS_MAX_GRAD_NORM))
    first_order = meta_train.parse_args(["--preset", name, "--first-order", "--out", "unused"])
    assert vars(first_order) == {**vars(args), "first_order": True}
    assert "rotated by 90/180/270 degrees as new classes" in PRESETS[name].title
    train, test = meta_train.build_sources(args, torch.float32)
    assert train.num_classes == test.num_classes == 20 and train.rotations and test.rotations
    digits = [{name.split()[0] for name in source.class_names} for source in (train, test)]
    assert digits == [{"0", "1", "2", "3", "4"}, {"5", "6", "7", "8", "9"}]  # rotations stay in their split


def test_every_value_a_preset_sets_is_a_flag_of_the_command_line():
    parser = meta_train.build_parser()
    for preset in PRESETS.values():
        assert set(preset.settings) <= set(parser._option_string_actions), preset.name
        assert all(setting.source for setting in preset.settings.values()), preset.name
        assert parser.parse_args([*preset.argv(), "--out", "x"])  # its values pass the flags' own checks


def test_explicit_flags_override_the_preset_and_each_override_is_listed():
    parser = meta_train.build_parser()
    argv = ["--preset", "omniglot-5w1s", "--inner-l", "0.5", "--first-order", "--filters", "64", "--data-root", "."]
    argv += ["--out", "x"]
    args = parser.parse_args(argv)
    overrides = meta_train.apply_preset(parser, args, argv)
    assert (args.inner_lr, args.first_order, args.filters, args.meta_batch_size) == (0.5, True, 64, 32)
    assert overrides == ["--inner-lr 0.5 (the preset's 0.4)"]  # --filters 64 is the preset's own value
    args = parse("--preset", "miniimagenet-5w1s", "--eval-steps", "0,10", "--eval-split", "val")
    assert (args.eval_steps, args.eval_split, args.inner_steps) == ("0,10", "val", 5)
    no_preset = meta_train.parse_args(["--out", "x"])
    assert (no_preset.inner_lr, no_preset.task, no_preset.eval_split) == (0.01, "sinusoid", None)  # the defaults


@pytest.mark.parametrize("name", DATASET_PRESETS)
def test_a_missing_dataset_is_one_error_line(name, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        meta_train.main(["--preset", name, "--data-root", str(root), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    assert err.splitlines()[0] == "device: cpu" and err.splitlines()[1].startswith("usage: ")
    error = err.splitlines()[2]
    assert len(err.splitlines()) == 3 and error.startswith("memmaml-train: error: argument --data-root: ")
    for piece in MISSING[name.split("-")[0]]:
        assert piece.format(root=root) in error, error
    assert "download=True" not in error  # the command line's words


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "omniglot"], "unknown preset 'omniglot'; choose from omniglot-5w1s, omniglot-5w5s"),
        (["--preset", "omniglot-5w2s"], "unknown preset 'omniglot-5w2s'"),
        (["--preset", ""], "unknown preset ''"),
        (["--preset", "omniglot-5w1s"], "argument --data-root: --task omniglot reads its images from a folder"),
        (["--preset", "digits-5w1s", "--eval-split", "val"], "argument --eval-split: digits have no val classes"),
        (["--preset", "digits-5w1s", "--download"], "argument --download: digits ship inside scikit-learn"),
    ],
)
def test_bad_preset_command_lines(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        meta_train.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in str(exit_info.value)
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_preset_names_are_read_in_any_case():
    assert parse("--preset", " Omniglot-5W1S ").preset == "omniglot-5w1s"


def test_help_lists_each_preset_with_its_target(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        meta_train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "flags given beside --preset override its values, and each override is printed" in text
    for name, target in TARGETS.items():
        assert f"{name} " in text and f"target: MAML {target}" in text
    assert "600 test tasks, mean accuracy with a 95% interval" in text
    assert "sets --task omniglot --rotations --image-size 28 --num-ways 5 --num-shots 1 --num-query 1" in text


def test_digits_preset_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert meta_train.main(["--preset", "digits-5w1s", *TINY, "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "preset digits-5w1s: scikit-learn's 8x8 digits, 5-way 1-shot" in err
    assert "preset digits-5w1s: overridden by --iterations 2 (the preset's 5000)" in err
    config = json.loads((out / "config.json").read_text())
    assert (config["task.source"], config["task.split"], config["eval_task.split"]) == ("digits", "train", "test")
    lr, clip = float(DIGITS_INNER_LR), float(DIGITS_MAX_GRAD_NORM)
    assert (config["run.preset"], config["inner_optimizer.lr"], config["num_inner_steps"]) == ("digits-5w1s", lr, 1)
    assert (config["max_grad_norm"], config["task.rotations"], config["eval_task.rotations"]) == (clip, True, True)
    final = json.loads((out / "summary.json").read_text())["final_eval"]
    assert {f"eval_accuracy@{k}" for k in (0, 1, 3, 10)} <= set(final)
    longer = ["--preset", "digits-5w1s", *TINY[2:], "--iterations", "3", "--resume"]
    assert meta_train.main([*longer, "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


def test_omniglot_preset_trains_on_finn_et_al_s_split(tmp_path):
    write_omniglot(tmp_path / "data")  # all 1,623 characters, 2 drawings each (tiny images)
    out = tmp_path / "run"
    small = ["--filters", "4", "--meta-batch-size", "2", "--num-eval-tasks", "2", "--iterations", "1"]
    argv = ["--preset", "omniglot-5w1s", "--data-root", str(tmp_path / "data"), *small, "--no-progress"]
    assert meta_train.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["task.split"], config["eval_task.split"], config["task.rotations"]) == ("train", "test", True)
    assert (config["task.num_classes"], config["eval_task.num_classes"]) == (1100, 423)  # characters, each x4


def test_miniimagenet_preset_reads_ravi_and_larochelle_s_csvs(tmp_path):
    write_mini_imagenet(tmp_path / "data", per_class=3)
    out = tmp_path / "run"
    small = ["--filters", "4", "--image-size", "16", "--meta-batch-size", "1", "--num-eval-tasks", "2"]
    argv = ["--preset", "miniimagenet-5w1s", "--data-root", str(tmp_path / "data"), *small, "--num-query", "2"]
    assert meta_train.main([*argv, "--iterations", "1", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["task.split"], config["task.num_query"]) == ("train", 2)
    assert (config["eval_task.split"], config["eval_task.num_query"]) == ("test", 1)  # K query images at test


class _Shaped:
    """A task source of one shape: ``build_model`` reads only the first support set's shape."""

    def __init__(self, *shape):
        self.shape = shape

    def sample(self, seed):
        from memmaml.tasks import Task

        images = torch.zeros(*self.shape)
        return Task((images, torch.zeros(len(images), dtype=torch.long)), (images, torch.zeros(len(images))))


@pytest.mark.parametrize(
    ("argv", "shape", "head_inputs"),
    [
        # Finn et al.'s miniImageNet net: 'VALID' max-pools 84 -> 42 -> 21 -> 10 -> 5, w5 is 32 * 5 * 5 inputs
        (["--preset", "miniimagenet-5w1s"], (5, 3, 84, 84), 32 * 5 * 5),
        # their Omniglot net's strided 'SAME' convolutions end in a 2 x 2 map (28 -> 14 -> 7 -> 4 -> 2)
        (["--preset", "omniglot-5w1s"], (5, 1, 28, 28), 64 * 2 * 2),
        (["--preset", "omniglot-20w1s"], (20, 1, 28, 28), 64 * 2 * 2),
        # the rule is the image's side, not the task's name: 28-pixel images in a folder get Omniglot's net, an
        # 8-pixel digit still reaches a 1 x 1 map, and CIFAR's 32 pixels give 2 x 2 either way
        (["--task", "imagefolder", "--image-size", "28"], (5, 1, 28, 28), 64 * 2 * 2),
        (["--task", "digits", "--model", "conv"], (5, 1, 8, 8), 64 * 1 * 1),
        (["--task", "cifar-fs"], (5, 3, 32, 32), 64 * 2 * 2),
    ],
    ids=["miniimagenet", "omniglot-5w", "omniglot-20w", "folder-28", "digits-8", "cifar-32"],
)
def test_conv_networks_have_finn_s_head_size(argv, shape, head_inputs):
    args = parse(*argv, "--data-root", ".") if argv[0] == "--preset" or "digits" not in argv else parse(*argv)
    heads = [m for m in meta_train.build_model(args, _Shaped(*shape)).modules() if isinstance(m, torch.nn.Linear)]
    assert heads[-1].in_features == head_inputs
