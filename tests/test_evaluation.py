"""Held-out evaluation (memmaml.batched_evaluate, MetaTrainer.evaluate): the loop and the vmap evaluator agree
with the engine run task by task and with each other, in float64; the confidence intervals are the textbook ones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import memmaml
from memmaml import MetaTrainer, TrainerConfig, batched_evaluate
from memmaml.tasks import Sinusoid, SyntheticClassification, accuracy, cross_entropy_loss, mse_loss
from memmaml.training._evaluation import summarize

DTYPE = torch.float64


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)).to(DTYPE)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_evaluate_matches_engine_per_task(vectorize):
    model = classifier()
    source = SyntheticClassification(5, 2, 3, 8, dtype=DTYPE)
    batch = source.sample_batch(range(6))
    opt = memmaml.SGD(0.3)
    out = batched_evaluate(
        model, cross_entropy_loss, batch, opt, steps=[3, 0, 1], metrics={"accuracy": accuracy}, vectorize=vectorize
    )
    assert out["loss"].shape == (6, 3) and out["accuracy"].shape == (6, 3)
    params = {k: v.detach() for k, v in model.named_parameters()}
    for t in range(6):
        task = batch.select(t)
        for column, steps in enumerate([0, 1, 3]):
            if steps == 0:
                adapted = params
            else:
                adapted = memmaml.unroll(
                    model, cross_entropy_loss, [task.support] * steps, opt, params=params, first_order=True
                ).params
            view = memmaml.AdaptedModule(model, adapted)
            torch.testing.assert_close(
                out["loss"][t, column], cross_entropy_loss(view, task.query).detach(), rtol=1e-10, atol=1e-12
            )
            torch.testing.assert_close(out["accuracy"][t, column], accuracy(view, task.query))
    assert out["loss"][:, 2].mean() < out["loss"][:, 0].mean()  # adaptation helps


@pytest.mark.parametrize(
    "opt", [lambda: memmaml.SGD(0.2, momentum=0.9), lambda: memmaml.Adam(0.05)], ids=["momentum", "adam"]
)
def test_loop_and_vmap_evaluators_agree(opt):
    """Step counts that need the optimizer state carried between measurements, a partly adapted model."""
    model = classifier(1)
    batch = SyntheticClassification(5, 2, 3, 8, dtype=DTYPE).sample_batch(range(10, 17))
    head = {k: v for k, v in model.named_parameters() if k.startswith("2.")}
    common = dict(steps=[5, 0, 2, 3], metrics={"accuracy": accuracy}, params=head)
    loop = batched_evaluate(model, cross_entropy_loss, batch, opt(), vectorize=False, **common)
    vmap = batched_evaluate(model, cross_entropy_loss, batch, opt(), vectorize=True, chunk_size=3, **common)
    assert loop.keys() == vmap.keys() == {"loss", "accuracy"}
    for name in loop:
        assert loop[name].shape == vmap[name].shape == (7, 4)
        torch.testing.assert_close(vmap[name], loop[name], rtol=1e-10, atol=1e-12)
    assert (loop["loss"][:, 3] - loop["loss"][:, 0]).abs().min() > 1e-3  # the steps really changed the model
    for name in loop:
        assert not loop[name].requires_grad and not vmap[name].requires_grad


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_bad_arguments(vectorize):
    model, batch = classifier(), SyntheticClassification(5, 2, 3, 8, dtype=DTYPE).sample_batch(range(2))
    with pytest.raises(ValueError, match="'loss'"):
        batched_evaluate(
            model, mse_loss, batch, memmaml.SGD(0.1), steps=[1], metrics={"loss": mse_loss}, vectorize=vectorize
        )
    with pytest.raises(ValueError, match="each entry of steps must be an integer >= 0, got -1"):
        batched_evaluate(model, cross_entropy_loss, batch, memmaml.SGD(0.1), steps=[0, -1], vectorize=vectorize)
    with pytest.raises(ValueError, match="at least one step count"):
        batched_evaluate(model, cross_entropy_loss, batch, memmaml.SGD(0.1), steps=[], vectorize=vectorize)
    with pytest.raises(TypeError, match="Task"):
        batched_evaluate(model, cross_entropy_loss, [batch], memmaml.SGD(0.1), steps=[1], vectorize=vectorize)


def test_summarize_gives_mean_and_textbook_confidence_interval():
    g = torch.Generator().manual_seed(0)
    values = {"loss": torch.rand(9, 2, generator=g, dtype=DTYPE), "accuracy": torch.rand(9, 2, generator=g)}
    row = summarize(values, ["loss", "accuracy"], [0, 4])
    assert set(row) == {f"eval_{m}@{s}{ci}" for m in ("loss", "accuracy") for s in (0, 4) for ci in ("", "_ci95")}
    for name in values:
        v = values[name].double()
        for column, s in enumerate([0, 4]):
            assert row[f"eval_{name}@{s}"] == pytest.approx(v[:, column].mean().item(), rel=1e-12)
            expected = 1.96 * v[:, column].std(unbiased=True).item() / math.sqrt(9)
            assert row[f"eval_{name}@{s}_ci95"] == pytest.approx(expected, rel=1e-9)
    single = summarize({"loss": torch.ones(1, 1, dtype=DTYPE)}, ["loss"], [0])
    assert single["eval_loss@0"] == 1.0 and math.isnan(single["eval_loss@0_ci95"])


def test_evaluation_reports_steps_and_confidence_intervals():
    model = classifier()
    shape = dict(num_ways=5, num_shots=2, num_query=3, num_features=8, dtype=DTYPE)
    rows = {}
    for vectorize in (False, True):
        trainer = MetaTrainer(
            model,
            SyntheticClassification(split="train", **shape),
            TrainerConfig(
                inner_optimizer=memmaml.SGD(0.5),
                num_inner_steps=2,
                meta_batch_size=2,
                num_eval_tasks=7,
                vectorize=vectorize,
            ),
            eval_source=SyntheticClassification(split="test", **shape),
        )
        rows[vectorize] = trainer.evaluate()
    assert set(rows[True]) == {
        f"eval_{m}@{s}{ci}" for m in ("loss", "accuracy") for s in (0, 1, 2) for ci in ("", "_ci95")
    }
    for key in rows[True]:
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-9, abs=1e-12)
    assert rows[True]["eval_accuracy@2"] > rows[True]["eval_accuracy@0"]
    assert rows[True]["eval_loss@1_ci95"] > 0


def test_trainer_evaluates_its_own_held_out_tasks_with_batched_evaluate():
    """MetaTrainer.evaluate is batched_evaluate on the tasks of eval_seed, summarised: nothing of its own."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).to(DTYPE)
    source = Sinusoid(num_shots=4, num_query=5, dtype=DTYPE)
    trainer = MetaTrainer(
        model,
        source,
        TrainerConfig(
            inner_optimizer=memmaml.SGD(0.05), num_inner_steps=2, num_eval_tasks=6, eval_steps=(0, 3), seed=5
        ),
    )
    tasks = source.sample_batch(memmaml.tasks.draw_seeds(torch.Generator().manual_seed(6), 6))
    values = batched_evaluate(model, mse_loss, tasks, memmaml.SGD(0.05), steps=[0, 3], vectorize=False)
    assert trainer.evaluate() == summarize(values, ["loss"], [0, 3])
