"""MetaTrainer and TrainerConfig: resumption reproduces the uninterrupted run, checkpoints are safe, paths agree."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import memmaml
import memmaml.training._trainer
from memmaml import (
    Binomial,
    IncompatibleCheckpointError,
    MetaTrainer,
    MetricsLog,
    Schedule,
    TrainerConfig,
    Uniform,
    atomic_save,
    load_checkpoint_file,
)
from memmaml.tasks import Sinusoid

DTYPE = torch.float64
TIMING = {"sec_per_iter", "elapsed_s"}


def model_fn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(1, 12), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(12, 1)]
    return nn.Sequential(*layers).to(DTYPE)


def make_config(**overrides) -> TrainerConfig:
    settings = dict(
        inner_optimizer=memmaml.SGD(0.05),
        num_inner_steps=2,
        meta_batch_size=3,
        num_eval_tasks=5,
        eval_steps=(0, 1, 3),
        seed=11,
        max_grad_norm=5.0,
    )
    settings.update(overrides)
    return TrainerConfig(**settings)


def make_trainer(model=None, outer_optimizer=None, **overrides) -> MetaTrainer:
    return MetaTrainer(
        model_fn() if model is None else model,
        Sinusoid(num_shots=4, num_query=5, dtype=DTYPE),
        make_config(**overrides),
        outer_optimizer=outer_optimizer,
    )


def strip_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize("log_name", ["metrics.jsonl", "metrics.csv"])
@pytest.mark.parametrize("variant", ["loop-dropout", "vectorized", "checkpointed"])
def test_resume_reproduces_uninterrupted_run(tmp_path, variant, log_name):
    """2N iterations straight == N iterations, a fresh process-like trainer resumed from the checkpoint, N more."""
    options = {
        "loop-dropout": dict(model_fn=lambda: model_fn(0, dropout=0.2)),  # the RNG state must be restored
        "vectorized": dict(vectorize=True),
        "checkpointed": dict(schedule=Uniform(1)),
    }[variant]
    build = options.pop("model_fn", model_fn)
    n, common = 4, dict(log_every=2, eval_every=2)

    straight = make_trainer(build(), **options)
    straight.train(2 * n, log_path=tmp_path / "a" / log_name, checkpoint_path=tmp_path / "a" / "ck.pt", **common)

    first = make_trainer(build(), **options)
    first.train(n, log_path=tmp_path / "b" / log_name, checkpoint_path=tmp_path / "b" / "ck.pt", **common)
    torch.manual_seed(1234)  # whatever happens to the global RNG between the two halves must not matter
    resumed = make_trainer(model_fn(99, dropout=0.2 if variant == "loop-dropout" else 0.0), **options)
    resumed.load_checkpoint(tmp_path / "b" / "ck.pt")
    assert resumed.iteration == n
    resumed.train(2 * n, log_path=tmp_path / "b" / log_name, checkpoint_path=tmp_path / "b" / "ck.pt", **common)

    rows_a = strip_timing(MetricsLog(tmp_path / "a" / log_name).read())
    rows_b = strip_timing(MetricsLog(tmp_path / "b" / log_name).read())
    assert [r["kind"] for r in rows_a] == ["eval", "train", "eval", "train", "eval", "train", "eval", "train", "eval"]
    assert rows_a == rows_b  # bit-identical metrics, read back from the files
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    state_a, state_b = straight.outer_optimizer.state_dict(), resumed.outer_optimizer.state_dict()
    for key in state_a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a["state"][key][name], state_b["state"][key][name])


def test_crash_and_resume_from_a_checkpoint_inside_a_logging_window(tmp_path, monkeypatch):
    """A checkpoint at iteration 3 with log_every=2 carries half a window; a crash at iteration 5 loses
    iterations 4-5; the resumed run still logs exactly what the uninterrupted run logged."""
    common = dict(log_every=2, eval_every=4, checkpoint_every=3)
    straight = make_trainer(vectorize=True)
    straight.train(8, log_path=tmp_path / "a.jsonl", checkpoint_path=tmp_path / "a.pt", **common)

    crashing = make_trainer(vectorize=True)
    original_step = MetaTrainer.step

    def step_then_crash(self):
        if self.iteration == 5:
            raise KeyboardInterrupt("killed")
        return original_step(self)

    monkeypatch.setattr(MetaTrainer, "step", step_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train(8, log_path=tmp_path / "b.jsonl", checkpoint_path=tmp_path / "b.pt", **common)
    monkeypatch.undo()
    assert load_checkpoint_file(tmp_path / "b.pt")["iteration"] == 3
    resumed = make_trainer(vectorize=True)
    resumed.load_checkpoint(tmp_path / "b.pt")
    resumed.train(8, log_path=tmp_path / "b.jsonl", checkpoint_path=tmp_path / "b.pt", **common)
    rows_a, rows_b = (strip_timing(MetricsLog(tmp_path / f"{x}.jsonl").read()) for x in "ab")
    assert rows_a == rows_b
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    log = tmp_path / "m.jsonl"
    trainer = make_trainer()
    trainer.train(2, log_path=log, checkpoint_path=tmp_path / "ck.pt")
    trainer.train(4, log_path=log)  # these rows are past the checkpoint (a crash before the next save)
    assert [r["iteration"] for r in MetricsLog(log).read()][-1] == 4
    resumed = make_trainer()
    resumed.load_checkpoint(tmp_path / "ck.pt")
    resumed.train(3, log_path=log)
    assert [r["iteration"] for r in MetricsLog(log).read() if r["kind"] == "train"] == [1, 2, 3]


def test_checkpoint_is_weights_only_and_refuses_other_configs(tmp_path):
    path = tmp_path / "ck.pt"
    trainer = make_trainer()
    trainer.train(2, checkpoint_path=path)
    data = torch.load(path, weights_only=True)  # plain tensors and Python values only
    assert data["iteration"] == 2 and data["config"]["inner_optimizer.lr"] == 0.05

    other = make_trainer(inner_optimizer=memmaml.SGD(0.1), meta_batch_size=4)
    with pytest.raises(IncompatibleCheckpointError) as info:
        other.load_checkpoint(path)
    message = str(info.value)
    assert "inner_optimizer.lr: checkpoint=0.05, this run=0.1" in message
    assert "meta_batch_size: checkpoint=3, this run=4" in message

    # speed-only settings may change: resume the loop run vectorised
    make_trainer(vectorize=True).load_checkpoint(path)

    with pytest.raises(IncompatibleCheckpointError, match="not a memmaml training checkpoint"):
        atomic_save({"something": torch.ones(1)}, tmp_path / "other.pt")
        load_checkpoint_file(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pt")


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    trainer = make_trainer()
    trainer.train(1, checkpoint_path=path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    trainer.step()
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary file left behind
    assert load_checkpoint_file(path)["iteration"] == 1


@pytest.mark.parametrize("first_order, clip", [(False, None), (True, None), (False, 0.01)])
def test_vectorized_loop_and_checkpointed_engines_agree(first_order, clip):
    engines = {
        "loop": {},
        "vmap": {"vectorize": True},
        "uniform": {"schedule": Uniform(2)},
        "binomial": {"schedule": Binomial(2)},
    }
    grads = {}
    for name, options in engines.items():
        trainer = make_trainer(first_order=first_order, num_inner_steps=5, max_grad_grad_norm=clip, **options)
        stats = trainer.compute_meta_gradient(trainer.sample_tasks())
        grads[name] = ([p.grad.clone() for p in trainer.meta_params], stats["loss"])
    for name in engines:
        for g, ref in zip(grads[name][0], grads["loop"][0], strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[name][1], grads["loop"][1], rtol=1e-12, atol=0)
    if clip is not None:  # the clip is active: the meta-gradient is not the unclipped one
        unclipped = make_trainer(first_order=first_order, num_inner_steps=5)
        unclipped.compute_meta_gradient(unclipped.sample_tasks())
        assert not torch.allclose(unclipped.meta_params[0].grad, grads["loop"][0][0])


def test_learnable_inner_lr_is_meta_trained_on_both_paths():
    grads = []
    for vectorize in (False, True):
        lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
        trainer = make_trainer(inner_optimizer=memmaml.SGD(lr), vectorize=vectorize)
        assert any(p is lr for p in trainer.meta_params)
        trainer.compute_meta_gradient(trainer.sample_tasks())
        grads.append(lr.grad.clone())
        trainer.outer_optimizer.step()
        assert lr.item() != 0.05
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=0)


def test_meta_gradient_is_clipped_to_max_grad_norm():
    model = model_fn()
    outer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = make_trainer(model, outer_optimizer=outer, max_grad_norm=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    row = trainer.step()
    assert row["grad_norm"] > 1e-3  # the logged norm is the norm before clipping
    moved = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before)))
    assert moved == pytest.approx(1e-3, rel=1e-5)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="meta_batch_size must be an integer >= 1, got 0"):
        make_trainer(meta_batch_size=0)
    with pytest.raises(ValueError, match="schedule must be None"):
        make_trainer(vectorize=True, schedule=Uniform(2))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        make_trainer(nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).to(DTYPE), vectorize=True)
    with pytest.raises(TypeError, match="task_source"):
        MetaTrainer(model_fn(), "sinusoid")
    with pytest.raises(TypeError, match="config must be a memmaml.TrainerConfig, got dict"):
        MetaTrainer(model_fn(), Sinusoid(num_shots=4), {"meta_batch_size": 3})
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint_path"):
        make_trainer().train(2, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"log path must end in \.jsonl or \.csv"):
        MetricsLog("metrics.txt")


@pytest.mark.parametrize(
    "schedule, offload",
    [("uniform:2", False), ("binomial:2", False), ("sqrt", False), ("auto:1GiB", False), ("binomial:2", True)],
)
def test_string_schedules_give_the_naive_meta_gradient(schedule, offload, monkeypatch):
    """A schedule's text form runs the checkpointed engine: the meta-gradient is the naive trainer's."""
    naive = make_trainer(num_inner_steps=5)
    ref_stats = naive.compute_meta_gradient(naive.sample_tasks())
    text = make_trainer(num_inner_steps=5, schedule=schedule, offload=offload)
    assert isinstance(text.config.schedule, Schedule)
    measured = []
    real = memmaml.training._trainer.measure_step_costs
    monkeypatch.setattr(
        memmaml.training._trainer, "measure_step_costs", lambda *a, **k: measured.append(1) or real(*a, **k)
    )
    stats = text.compute_meta_gradient(text.sample_tasks())  # the same seed: the same meta-batch
    assert max(p.grad.abs().max().item() for p in naive.meta_params) > 1e-3
    for got, ref in zip(text.meta_params, naive.meta_params, strict=True):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats["loss"], ref_stats["loss"], rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["loss_before"], ref_stats["loss_before"], rtol=1e-12, atol=0)
    text.compute_meta_gradient(text.sample_tasks())
    assert len(measured) == (1 if schedule.startswith("auto") else 0), "Auto measures once per trainer"
    assert text._schedule_choice(None).offload is offload


def test_string_and_object_schedules_are_the_same_configuration(tmp_path):
    """A checkpoint written with Uniform(2) resumes with "uniform:2", and the reverse; another schedule is refused."""
    make_trainer(schedule=Uniform(2)).train(1, checkpoint_path=tmp_path / "object.pt", progress=False)
    make_trainer(schedule="uniform:2").train(1, checkpoint_path=tmp_path / "text.pt", progress=False)
    make_trainer(schedule="uniform:2").load_checkpoint(tmp_path / "object.pt")
    make_trainer(schedule=Uniform(2)).load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(IncompatibleCheckpointError, match="schedule: checkpoint='Uniform"):
        make_trainer(schedule="binomial:2").load_checkpoint(tmp_path / "text.pt")


BAD_CONFIGS = [
    ({"offload": True}, ValueError, "offload=True needs a checkpoint schedule"),
    ({"num_inner_steps": 0}, ValueError, "num_inner_steps must be an integer >= 1, got 0"),
    ({"meta_batch_size": 2.5}, ValueError, "meta_batch_size must be an integer >= 1, got 2.5"),
    ({"num_eval_tasks": -1}, ValueError, "num_eval_tasks must be an integer >= 1, got -1"),
    ({"inner_optimizer": torch.optim.SGD}, TypeError, "inner_optimizer must be a memmaml in-graph optimizer"),
    ({"eval_optimizer": "sgd"}, TypeError, "eval_optimizer must be a memmaml in-graph optimizer"),
    ({"schedule": 5}, TypeError, "schedule must be a memmaml.Schedule, its text form"),
    ({"schedule": "binomial:0"}, ValueError, "schedule: bad schedule 'binomial:0': slots must be a positive integer"),
    ({"schedule": "revolve:3"}, ValueError, "schedule: unknown schedule 'revolve:3'"),
    ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm must be a positive number, got 0.0"),
    ({"max_grad_norm": math.nan}, ValueError, "max_grad_norm must be a positive number, got nan"),
    ({"max_grad_grad_norm": -1}, ValueError, "max_grad_grad_norm must be a positive number, got -1"),
    ({"outer_lr": -1e-3}, ValueError, "outer_lr must satisfy 0.0 <= outer_lr, got -0.001"),
    ({"outer_lr": "fast"}, TypeError, "outer_lr must be a number, got str"),
    ({"seed": "3"}, TypeError, "seed must be an int, got str"),
    ({"eval_seed": 1.5}, TypeError, "eval_seed must be an int, got float"),
    ({"eval_steps": (0, -1)}, ValueError, "each entry of eval_steps must be an integer >= 0, got -1"),
    ({"eval_steps": ()}, ValueError, "eval_steps must hold at least one step count"),
    ({"eval_steps": "0,1"}, TypeError, "eval_steps must be a sequence of step counts, got str"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be a positive integer, got 0"),
    (
        {"randomness": "sometimes"},
        ValueError,
        "randomness must be one of 'error', 'different', 'same'; got 'sometimes'",
    ),
    ({"vectorize": True, "schedule": "uniform:2"}, ValueError, "schedule must be None, got 'uniform:2'"),
]


@pytest.mark.parametrize("settings, error, message", BAD_CONFIGS, ids=[", ".join(c[0]) for c in BAD_CONFIGS])
def test_trainer_config_names_the_bad_field(settings, error, message):
    with pytest.raises(error, match=re.escape(message)):
        TrainerConfig(**settings)
    with pytest.raises(error, match=re.escape(message)):  # replace() checks the variant again
        dataclasses.replace(TrainerConfig(), **settings)


def test_trainer_config_is_frozen_normalised_and_resolved():
    config = TrainerConfig(
        num_inner_steps=4, eval_steps=[5, 0, 5, 2], schedule="binomial:3", seed=7, max_grad_norm=math.inf
    )
    assert config.eval_steps == (0, 2, 5) and config.schedule == "binomial:3" and config.max_grad_norm == math.inf
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_inner_steps = 5
    resolved = TrainerConfig(num_inner_steps=4, seed=7).resolved()
    assert resolved.eval_steps == (0, 1, 4) and resolved.eval_seed == 8
    assert resolved.eval_optimizer is resolved.inner_optimizer
    assert repr(config.resolved().schedule) == repr(Binomial(3))
    plain = config.plain()
    assert plain["schedule"] == repr(Binomial(3)) and plain["eval_steps"] == [0, 2, 5] and plain["eval_seed"] == 8
    assert "outer_lr" not in plain  # the outer optimizer's own lr is recorded instead
    numpy = pytest.importorskip("numpy")
    assert type(TrainerConfig(seed=numpy.int64(3)).seed) is int  # a seed from a NumPy sweep is an int


def test_cli_runs_resumes_and_refuses_to_overwrite(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import meta_train
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    args = [
        "--task",
        "sinusoid",
        "--iterations",
        "6",
        "--meta-batch-size",
        "4",
        "--num-eval-tasks",
        "8",
        "--eval-every",
        "3",
        "--log-every",
        "3",
        "--checkpoint-every",
        "3",
        "--vectorize",
        "--no-progress",
        "--hidden",
        "8",
        "--out",
        str(out),
    ]
    assert meta_train.main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["kind"]) for r in rows] == [
        (0, "eval"),
        (3, "train"),
        (3, "eval"),
        (6, "train"),
        (6, "eval"),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 6 and "eval_loss@1" in summary["final_eval"]
    with pytest.raises(SystemExit, match="pass --resume"):
        meta_train.main(args)
    longer = [a if a != "6" else "9" for a in args]
    assert meta_train.main([*longer, "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 9
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:  # one line naming the differing keys, no traceback, nothing written
        meta_train.main([*longer, "--resume", "--inner-lr", "0.5"])
    assert exit_info.value.code == 2
    message = str(exit_info.value)
    assert message.startswith("argument --resume: checkpoint ") and "\n" not in message
    assert "run.inner_lr: checkpoint=0.01, this run=0.5" in message and "(the flags: --inner-lr)" in message
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
