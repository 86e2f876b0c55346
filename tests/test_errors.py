"""Bad input gets a clear error that names what is wrong."""

import math

import pytest
import torch
from helpers import mlp, mse, regression_batches

import memmaml

BOTH = [
    lambda model, loss, **kw: memmaml.NaiveMAML(model, loss, memmaml.SGD(0.1), **kw),
    lambda model, loss, **kw: memmaml.GradientCheckpointMAML(model, loss, memmaml.SGD(0.1), checkpoint_steps=2, **kw),
]


@pytest.mark.parametrize("make", BOTH)
def test_empty_inputs(make):
    with pytest.raises(ValueError, match="at least one batch"):
        make(mlp(0), mse)([])


@pytest.mark.parametrize("make", BOTH)
def test_inputs_must_be_a_sequence_of_batches(make):
    with pytest.raises(TypeError, match=r"sequence of batches.*\[batch\] \* n"):
        make(mlp(0), mse)(torch.ones(3))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_checkpoint_steps_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=f"checkpoint_steps must be a positive integer, got {bad!r}"):
        memmaml.GradientCheckpointMAML(mlp(0), mse, memmaml.SGD(0.1), checkpoint_steps=bad)


@pytest.mark.parametrize("make", BOTH)
def test_non_scalar_loss_names_the_step(make):
    def loss(model, batch):
        out = (model(batch[0]) - batch[1]) ** 2
        return out.mean() if batch[2] < 2 else out.mean(0)

    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(4))]
    with pytest.raises(ValueError, match=r"at inner step 2 it returned a tensor of shape \(2,\)"):
        make(mlp(0), loss)(batches)


@pytest.mark.parametrize("make", BOTH)
def test_loss_that_is_not_a_tensor(make):
    with pytest.raises(ValueError, match="at inner step 0 it returned a float"):
        make(mlp(0), lambda m, b: 1.0)(regression_batches(2))


@pytest.mark.parametrize("make", BOTH)
def test_unused_adapted_parameter_is_named_and_can_be_allowed(make):
    model = mlp(0)

    def loss(m, batch):  # skips the last layer's bias
        w, b = m.params["2.weight"], m.params["2.bias"]
        hidden = torch.tanh(
            torch.func.functional_call(
                model[0], {"weight": m.params["0.weight"], "bias": m.params["0.bias"]}, (batch[0],)
            )
        )
        hidden = torch.tanh(torch.func.functional_call(model[2], {"weight": w, "bias": b}, (hidden,)))
        return ((hidden @ m.params["4.weight"].T - batch[1]) ** 2).mean()

    with pytest.raises(
        ValueError,
        match=r"adapted parameter '4.bias' does not affect the loss at inner step 0.*"
        r"allow_unused=True",
    ):
        make(model, loss)(regression_batches(3))
    result = make(model, loss)(regression_batches(3), allow_unused=True)
    torch.testing.assert_close(result.model.params["4.bias"], model[4].bias)


@pytest.mark.parametrize("make", BOTH)
def test_get_parameters_must_return_the_models_parameters(make):
    stranger = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(3,\) at position 1 that is not a parameter of the model"):
        make(mlp(0), mse, get_parameters=lambda m: [m[0].weight, stranger])(regression_batches(2))
    with pytest.raises(ValueError, match="twice"):
        make(mlp(0), mse, get_parameters=lambda m: [m[0].weight, m[0].weight])(regression_batches(2))
    with pytest.raises(ValueError, match="nothing to adapt"):
        make(mlp(0), mse, get_parameters=lambda m: [])(regression_batches(2))
    with pytest.raises(TypeError, match="not a single tensor"):
        make(mlp(0), mse, get_parameters=lambda m: m[0].weight)(regression_batches(2))


@pytest.mark.parametrize("make", BOTH)
def test_non_finite_loss_names_the_step_when_asked(make):
    def loss(model, batch):
        value = mse(model, batch)
        return value * math.inf if batch[2] == 3 else value

    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(5))]
    with pytest.raises(FloatingPointError, match="loss at inner step 3 is not finite"):
        make(mlp(0), loss)(batches, check_finite=True)
    make(mlp(0), loss)(batches)  # unchecked: no host sync, no error


def test_loss_that_ignores_the_model():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on any adapted parameter"):
        memmaml.NaiveMAML(mlp(0), lambda m, b: (x**2).sum().detach())(regression_batches(2))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", True])
def test_max_grad_grad_norm(bad):
    with pytest.raises(ValueError, match="max_grad_grad_norm must be a positive number"):
        memmaml.NaiveMAML(mlp(0), mse)(regression_batches(2), max_grad_grad_norm=bad)


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        memmaml.NaiveMAML(lambda x: x, mse)
    with pytest.raises(TypeError, match="optimizer must be a memmaml in-graph optimizer"):
        memmaml.NaiveMAML(mlp(0), mse, torch.optim.SGD(mlp(0).parameters(), lr=0.1))
    with pytest.raises(TypeError, match="loss_function must be callable"):
        memmaml.NaiveMAML(mlp(0), "mse")
    with pytest.raises(TypeError, match="unknown hyperparameter 'learning_rat'"):
        memmaml.NaiveMAML(mlp(0), mse, memmaml.IngraphGradientDescent(0.1))(
            regression_batches(2), opt_kwargs={"learning_rat": 0.2}
        )
