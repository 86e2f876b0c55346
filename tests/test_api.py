"""The public API: one path per name, one wrapper class, one result type, one cost model."""

import inspect
import types

import pytest
import torch
from helpers import assert_rel_close, flat, mlp, mse, regression_batches

import memmaml
from memmaml import (
    MAML,
    Auto,
    Binomial,
    Choice,
    GradientCheckpointMAML,
    NaiveMAML,
    PlanStats,
    SqrtUniform,
    StepCosts,
    Uniform,
    check_plan,
    longest_steps,
    predicted_host_bytes,
    predicted_peak_bytes,
)


def test_all_is_sorted_complete_and_holds_no_modules():
    assert memmaml.__all__ == sorted(memmaml.__all__)
    for name in memmaml.__all__:
        value = getattr(memmaml, name)
        assert not isinstance(value, types.ModuleType), f"{name} is a module: members only at the top level"
        assert getattr(value, "__module__", "memmaml").startswith("memmaml"), name
    public = {name for name in dir(memmaml) if not name.startswith("_")}
    namespaces = {"tasks", "models", "bench", "cli"}
    layers = {"schedules", "optim", "engine", "training"}  # where the names live; memmaml.X is their one path
    assert public - set(memmaml.__all__) <= namespaces | layers, public - set(memmaml.__all__) - namespaces - layers


def test_returned_types_are_exported_beside_their_functions():
    exported = {getattr(memmaml, name) for name in memmaml.__all__}
    for name in memmaml.__all__:
        value = getattr(memmaml, name)
        if inspect.isfunction(value):
            returned = inspect.signature(value).return_annotation
            for candidate in vars(memmaml).values():
                if isinstance(candidate, type) and candidate.__name__ in str(returned):
                    assert candidate in exported, f"{name} returns {candidate.__name__}, which is not exported"
    assert {StepCosts, Choice, PlanStats, memmaml.Result} <= exported


def test_internal_hooks_are_private():
    assert not hasattr(memmaml, "host_allocations")
    assert "host_allocations" not in memmaml.__all__


def test_py_typed_marker_ships():
    import pathlib

    assert (pathlib.Path(memmaml.__file__).parent / "py.typed").exists()


# ------------------------------------------------------------------------ one wrapper class
def _meta_gradient(maml, model, n=5):
    result = maml(regression_batches(n))
    loss = mse(result.model, regression_batches(1, seed=9)[0]) + torch.stack(result.loss_history).sum()
    return flat(torch.autograd.grad(loss, list(model.parameters())))


def test_maml_with_a_schedule_equals_the_compatibility_names():
    model = mlp(0)
    reference = _meta_gradient(NaiveMAML(model, mse, memmaml.SGD(0.1)), model)
    for make in (
        lambda m: MAML(m, mse, memmaml.SGD(0.1)),
        lambda m: MAML(m, mse, memmaml.SGD(0.1), schedule="uniform:2"),
        lambda m: MAML(m, mse, memmaml.SGD(0.1), schedule=Binomial(2), offload=True),
        lambda m: GradientCheckpointMAML(m, mse, memmaml.SGD(0.1), 2),
    ):
        model = mlp(0)
        assert_rel_close(_meta_gradient(make(model), model), reference)
    assert isinstance(NaiveMAML(mlp(0), mse), MAML) and isinstance(GradientCheckpointMAML(mlp(0), mse), MAML)
    assert NaiveMAML(mlp(0), mse).schedule is None
    assert repr(GradientCheckpointMAML(mlp(0), mse).schedule) == "Uniform(checkpoint_steps=1)"


def test_checkpoint_steps_and_schedule_together_are_an_error():
    with pytest.raises(ValueError, match="pass checkpoint_steps or schedule, not both"):
        GradientCheckpointMAML(mlp(0), mse, memmaml.SGD(0.1), checkpoint_steps=5, schedule="binomial:3")
    assert GradientCheckpointMAML(mlp(0), mse, memmaml.SGD(0.1), schedule="binomial:3").checkpoint_steps is None
    assert GradientCheckpointMAML(mlp(0), mse, memmaml.SGD(0.1), 7).checkpoint_steps == 7


def test_offload_without_a_schedule_is_an_error():
    with pytest.raises(ValueError, match="offload=True needs a checkpoint schedule"):
        MAML(mlp(0), mse, memmaml.SGD(0.1), offload=True)


def test_one_result_type_unpacks_like_torch_maml():
    model = mlp(0)
    result = MAML(model, mse, memmaml.Adam(0.1), schedule="sqrt")(regression_batches(4))
    adapted, losses, state = result
    assert isinstance(result, memmaml.Result) and adapted is result.model and len(losses) == 4
    assert result.params is result.model.params and isinstance(state, memmaml.AdamState)
    functional = memmaml.unroll(
        model, mse, regression_batches(4), memmaml.Adam(0.1), params=dict(model.named_parameters()), schedule="sqrt"
    )
    assert type(functional) is memmaml.Result
    torch.testing.assert_close(flat(list(functional.params.values())), flat(list(result.params.values())))


def test_last_choice_describes_the_schedule_that_ran():
    maml = MAML(mlp(0), mse, memmaml.SGD(0.1), schedule="binomial:3", offload=True)
    maml(regression_batches(20))
    choice = maml.last_choice
    assert choice.schedule.slots == 3 and choice.offload and choice.num_steps == 20
    assert choice.describe().startswith("Binomial(slots=3) for 20 steps: 3 stored states in host memory")
    assert maml.step_costs is None, "a given schedule measures nothing"


# ---------------------------------------------------------------------------- cost model
COSTS = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)


@pytest.mark.parametrize("schedule", [Uniform(1), Uniform(3), Uniform(50), SqrtUniform(), Binomial(1), Binomial(4)])
def test_closed_form_stats_equal_the_simulated_plan(schedule):
    for n in range(1, 60):
        assert schedule.stats(n) == check_plan(schedule.plan(n)), (schedule, n)


def test_peak_model_matches_its_documented_formulas():
    n = 100
    assert predicted_peak_bytes(None, n, COSTS) == n * 2_000
    assert predicted_peak_bytes(Uniform(10).stats(n), n, COSTS) == (10 + 1) * 100 + 10 * 2_000
    assert predicted_peak_bytes(Binomial(6).stats(n), n, COSTS) == (6 + 2) * 100 + 2_000
    # offloaded: the working state, the state a replay started from and the next one, copied back meanwhile
    assert predicted_peak_bytes(Binomial(6).stats(n), n, COSTS, offload=True) == 3 * 100 + 2_000
    assert predicted_peak_bytes(Binomial(6).stats(n), n, COSTS, offload=True, prefetch=False) == 2 * 100 + 2_000
    assert predicted_host_bytes(Binomial(6).stats(n), n, COSTS, offload=True) == (6 + 1) * 100
    assert predicted_host_bytes(Binomial(6).stats(n), n, COSTS) == 0
    assert predicted_peak_bytes(None, n, COSTS, base=7) == n * 2_000 + 7


def test_longest_steps_searches_the_same_model():
    budget = 50_000
    naive = longest_steps(lambda n: predicted_peak_bytes(None, n, COSTS), budget)
    assert naive == 25
    uniform = longest_steps(lambda n: predicted_peak_bytes(Uniform(10).stats(n), n, COSTS), budget)
    assert predicted_peak_bytes(Uniform(10).stats(uniform), uniform, COSTS) <= budget
    assert predicted_peak_bytes(Uniform(10).stats(uniform + 1), uniform + 1, COSTS) > budget
    assert longest_steps(lambda n: predicted_peak_bytes(Binomial(6).stats(n), n, COSTS), budget) is None
    assert longest_steps(lambda n: predicted_peak_bytes(None, n, COSTS), 100) == 0


def test_auto_is_a_choice_not_a_plan():
    with pytest.raises(TypeError, match="is not a plan"):
        Auto("1GiB").plan(10)
    with pytest.raises(ValueError, match="chooses from measured step costs"):
        Auto("1GiB").choose(10)
    choice = Auto(10**9).choose(50, COSTS)
    assert choice == Auto(10**9).choose(50, COSTS), "a pure function of (n, costs, budget)"
    assert choice.describe().startswith("Auto(budget=953.7 MiB) chose naive (whole graph) for 50 steps")


def test_sqrt_uniform_says_what_it_is():
    assert repr(SqrtUniform()) == "SqrtUniform()" and repr(memmaml.parse_schedule("sqrt")) == "SqrtUniform()"
    assert SqrtUniform().stats(10).max_segment == 4


# ---------------------------------------------------------------------- engine text forms
@pytest.mark.parametrize(
    "text, schedule, offload",
    [
        ("naive", "None", False),
        ("uniform:5", "Uniform(checkpoint_steps=5)", False),
        ("uniform:5+offload", "Uniform(checkpoint_steps=5)", True),
        ("sqrt", "SqrtUniform()", False),
        ("binomial:4 +offload", "Binomial(slots=4)", True),
        ("binomial:4:2+offload", "Binomial(slots=4, segment=2)", True),
        ("auto:1GiB", "Auto(budget='1.0 GiB')", False),
        ("uniform:best", "Auto(budget='11.0 GiB', among=('uniform',))", False),
        ("binomial:auto+offload", "Auto(budget='11.0 GiB', among=('binomial',))", True),
    ],
)
def test_parse_engine_reads_every_form(text, schedule, offload):
    spec = memmaml.parse_engine(text, budget="11GiB")
    assert repr(spec.schedule) == schedule and spec.offload is offload


@pytest.mark.parametrize(
    "text, message",
    [
        ("revolve:3", r"unknown engine 'revolve:3'; use one of 'naive', 'uniform:K', 'sqrt', 'binomial:SLOTS'"),
        ("naive+offload", "the naive unroll stores no states to offload"),
        ("binomial:0", "slots must be a positive integer"),
        ("uniform:five", r"'uniform:K' takes a whole number of steps per segment after the colon, got 'five'"),
        ("binomial:2.5", r"'binomial:SLOTS' takes a whole number of stored states after the colon, got '2.5'"),
    ],
)
def test_parse_engine_says_what_is_accepted(text, message):
    with pytest.raises(ValueError, match=message):
        memmaml.parse_engine(text, budget="1GiB")
    with pytest.raises(ValueError, match="chooses its slots for a memory budget"):
        memmaml.parse_engine("binomial:auto")


def test_auto_restricted_to_one_family():
    uniform = Auto(None, among=("uniform",)).choose(100, COSTS)
    assert isinstance(uniform.schedule, Uniform) and uniform.schedule == uniform.schedule
    assert uniform.schedule.checkpoint_steps == memmaml.best_uniform(100, COSTS).checkpoint_steps
    binomial = Auto(50_000, among=("binomial",)).choose(100, COSTS)
    assert isinstance(binomial.schedule, Binomial) and binomial.predicted_peak_bytes <= 50_000
    with pytest.raises(ValueError, match="needs a memory budget"):
        Auto(None)
    with pytest.raises(ValueError, match="among must name some of"):
        Auto("1GiB", among=("revolve",))


@pytest.mark.parametrize("size", ["0.5", "0.9B", 0, -3, "0"])
def test_a_memory_size_is_at_least_one_byte(size):
    with pytest.raises(ValueError, match="a memory size must be (positive|at least one byte)"):
        memmaml.parse_size(size)
