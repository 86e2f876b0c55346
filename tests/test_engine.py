"""The checkpointed engine against the naive reference, float64, relative 1e-10."""

import pytest
import torch
from helpers import DTYPE, assert_rel_close, flat, mlp, mse, regression_batches

import memmaml

N = 7  # not divisible by 2 or 3


def _optimizers(learnable=True):
    """One optimizer of each kind; the learning rate is a leaf tensor that requires grad."""
    lr = (lambda v: torch.tensor(v, dtype=DTYPE, requires_grad=True)) if learnable else (lambda v: v)
    return {
        "sgd-nesterov": memmaml.SGD(lr(0.1), momentum=0.7, nesterov=True),
        "rmsprop-centered": memmaml.RMSProp(lr(0.02), momentum=0.3, centered=True, alpha=0.9),
        "adam": memmaml.Adam(lr(0.02)),
        "ingraph-gd": memmaml.IngraphGradientDescent(lr(0.1)),
        "ingraph-rmsprop": memmaml.IngraphRMSProp(learning_rate=lr(0.02), beta=0.9),
    }


def _meta(maml_factory, optimizer, *, backward, k=None, n=N, clip=None, first_order=False, get_parameters=None, seed=0):
    """Run one meta-step; return everything that must agree between engines."""
    model = mlp(seed)
    lr = optimizer.hyperparams["lr"]
    batches = regression_batches(n)
    query = regression_batches(1, seed=99)[0]
    kwargs = {} if get_parameters is None else {"get_parameters": get_parameters}
    maml = maml_factory(model, mse, optimizer, k, kwargs)
    result = maml(batches, max_grad_grad_norm=clip, first_order=first_order)
    # query loss plus a weighted loss history: both paths of the meta-gradient are exercised
    history = torch.stack(result.loss_history)
    meta_loss = mse(result.model, query) + (history * torch.linspace(0.1, 0.5, n, dtype=DTYPE)).sum()
    wrt = list(model.parameters()) + ([lr] if isinstance(lr, torch.Tensor) else [])
    if backward == "backward":
        meta_loss.backward()
        grads = [t.grad for t in wrt]
    else:
        grads = list(torch.autograd.grad(meta_loss, wrt))
    adapted = [t.detach() for t in result.model.params.values()]
    opt_leaves = [
        t.detach() for t in torch.utils._pytree.tree_leaves(result.optimizer_state) if isinstance(t, torch.Tensor)
    ]
    return {
        "loss": meta_loss.detach(),
        "history": history.detach(),
        "adapted": adapted,
        "opt_state": opt_leaves,
        "grads": grads,
    }


def naive(model, loss, opt, k, kwargs):
    return memmaml.NaiveMAML(model, loss, opt, **kwargs)


def checkpointed(model, loss, opt, k, kwargs):
    return memmaml.GradientCheckpointMAML(model, loss, opt, checkpoint_steps=k, **kwargs)


def _compare(reference, got):
    for key in ("loss", "history", "adapted", "opt_state", "grads"):
        if isinstance(reference[key], list) and not reference[key]:
            assert not got[key], key
            continue
        assert_rel_close(got[key], reference[key], what=key)


def _learnable_lr(value=0.1):
    return torch.tensor(value, dtype=DTYPE, requires_grad=True)


@pytest.mark.parametrize("opt_name", list(_optimizers(False)))
@pytest.mark.parametrize("clip", [None, 0.02])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("backward", ["backward", "autograd.grad"])
def test_checkpointed_matches_naive(opt_name, clip, first_order, backward):
    reference = _meta(naive, _optimizers()[opt_name], backward=backward, clip=clip, first_order=first_order)
    assert flat(reference["grads"]).abs().max() > 1e-6, "meta-gradient vanished: the comparison would be empty"
    for k in (1, 2, 3, N, N + 5):
        got = _meta(checkpointed, _optimizers()[opt_name], backward=backward, k=k, clip=clip, first_order=first_order)
        _compare(reference, got)


def test_clipping_is_active_in_the_comparison():
    """The clip value used above changes the meta-gradient, so the clipped comparison tests clipping."""
    plain = _meta(naive, memmaml.SGD(_learnable_lr(), momentum=0.7), backward="backward")
    clipped = _meta(naive, memmaml.SGD(_learnable_lr(), momentum=0.7), backward="backward", clip=0.02)
    assert (flat(plain["grads"]) - flat(clipped["grads"])).abs().max() > 1e-3


def test_first_order_differs_from_second_order():
    second = _meta(naive, memmaml.SGD(0.3), backward="backward")
    first = _meta(naive, memmaml.SGD(0.3), backward="backward", first_order=True)
    assert (flat(second["grads"]) - flat(first["grads"])).abs().max() > 1e-4


def test_first_order_meta_gradient_is_query_gradient_at_adapted_params():
    """FOMAML with SGD: d(query loss)/d(theta_0) equals the query gradient at theta_n."""
    for factory in (naive, checkpointed):
        model = mlp(0)
        maml = factory(model, mse, memmaml.SGD(0.2), 3, {})
        result = maml(regression_batches(5), first_order=True)
        query = regression_batches(1, seed=99)[0]
        mse(result.model, query).backward()
        at = {name: t.detach().requires_grad_() for name, t in result.model.params.items()}
        expected = torch.autograd.grad(mse(memmaml.AdaptedModule(model, at), query), list(at.values()))
        assert_rel_close([p.grad for p in model.parameters()], list(expected), what=factory.__name__)


def test_head_only_adaptation_gives_static_params_meta_gradients():
    head = lambda m: list(m[-1].parameters())
    reference = _meta(naive, memmaml.Adam(_learnable_lr(0.05)), backward="backward", get_parameters=head)
    body_grad = flat(reference["grads"][:2])
    assert body_grad.abs().max() > 1e-6, "the body's meta-gradient must flow through the inner loop"
    for k in (1, 3, N + 1):
        got = _meta(checkpointed, memmaml.Adam(_learnable_lr(0.05)), backward="backward", k=k, get_parameters=head)
        _compare(reference, got)


def test_meta_sgd_per_parameter_learning_rates():
    def make():
        model = mlp(0)
        lrs = {name: torch.full_like(p, 0.05).requires_grad_() for name, p in model.named_parameters()}
        return model, lrs

    grads = []
    for factory in (naive, checkpointed):
        model, lrs = make()
        result = factory(model, mse, memmaml.SGD(lrs), 2, {})(regression_batches(5))
        mse(result.model, regression_batches(1, seed=99)[0]).backward()
        grads.append([p.grad for p in model.parameters()] + [lr.grad for lr in lrs.values()])
    assert flat(grads[0]).abs().max() > 0
    assert_rel_close(grads[1], grads[0], what="Meta-SGD")


def test_opt_kwargs_loss_kwargs_and_batch_tensors_receive_gradients():
    """Tensors that require grad in opt_kwargs, loss_kwargs and the batches are inputs of the replay."""
    outs = []
    for factory in (naive, checkpointed):
        model = mlp(0)
        lr = _learnable_lr(0.2)
        scale = torch.tensor(1.5, dtype=DTYPE, requires_grad=True)
        batches = regression_batches(N)
        x0 = batches[0][0].clone().requires_grad_()
        batches = [(x0, batches[0][1])] + batches[1:] + [(x0, batches[1][1])]  # x0 used at two steps
        result = factory(model, mse, memmaml.SGD(0.01), 3, {})(
            batches, opt_kwargs={"lr": lr}, loss_kwargs={"scale": scale}
        )
        loss = mse(result.model, regression_batches(1, seed=99)[0])
        outs.append(torch.autograd.grad(loss, [lr, scale, x0, *model.parameters()]))
    for a, b in zip(outs[1], outs[0]):
        assert b.abs().max() > 0
        assert_rel_close(a, b, what="extras")


def test_chained_unrolls_and_optimizer_state_carry_over():
    """A second call continues from the first call's state; gradients flow through both."""
    outs = []
    for factory in (naive, checkpointed):
        model = mlp(0)
        maml = factory(model, mse, memmaml.Adam(0.05), 2, {})
        first = maml(regression_batches(3))
        second = memmaml.unroll(
            model,
            mse,
            regression_batches(3, seed=5),
            maml.optimizer,
            params=first.model.params,
            opt_state=first.optimizer_state,
            schedule=maml.schedule,
        )
        loss = mse(memmaml.AdaptedModule(model, second.params), regression_batches(1, seed=99)[0])
        outs.append(torch.autograd.grad(loss, list(model.parameters())))
    assert_rel_close(list(outs[1]), list(outs[0]), what="chained")


def test_backward_twice_with_retain_graph():
    """The first backward pass frees stored states; a second one rebuilds them from the input state."""
    calls = []

    def loss_fn(model, batch):
        calls.append(batch[2])
        return mse(model, batch)

    model = mlp(0, dropout=0.3)
    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(5))]
    result = checkpointed(model, loss_fn, memmaml.SGD(0.1), 2, {})(batches)
    loss = mse(result.model, regression_batches(1, seed=99)[0])
    calls.clear()
    loss.backward(retain_graph=True)
    assert calls == [2, 3, 0, 1], "the forward pass kept the last segment's graph (step 4)"
    once = flat([p.grad.clone() for p in model.parameters()])
    calls.clear()
    loss.backward()
    assert calls == [0, 1, 2, 3, 4, 2, 3, 0, 1], "rebuild the stored states 2 and 4, then replay"
    torch.testing.assert_close(flat([p.grad for p in model.parameters()]), 2 * once, rtol=1e-13, atol=0)


def test_no_grad_forward_keeps_nothing_and_matches():
    model = mlp(0)
    reference = naive(model, mse, memmaml.SGD(0.1), None, {})(regression_batches(5))
    with torch.no_grad():
        result = checkpointed(model, mse, memmaml.SGD(0.1), 2, {})(regression_batches(5))
    assert all(not t.requires_grad for t in result.model.params.values())
    assert_rel_close(
        list(result.model.params.values()), [t.detach() for t in reference.model.params.values()], what="no_grad"
    )


def test_result_model_is_a_module_computing_with_adapted_parameters():
    model = mlp(0)
    result = checkpointed(model, mse, memmaml.SGD(0.5), 2, {})(regression_batches(3))
    assert isinstance(result.model, torch.nn.Module)
    x = regression_batches(1)[0][0]
    by_hand = torch.func.functional_call(model, {k: v.detach() for k, v in result.model.params.items()}, (x,))
    torch.testing.assert_close(result.model(x).detach(), by_hand)
    assert not torch.allclose(model(x), by_hand), "adaptation must have changed the function"
    names = [name for name, _ in result.model.named_parameters()]
    assert names == [name for name, _ in model.named_parameters()]
    assert all(a is result.model.params[n] for n, a in result.model.named_parameters())
    state = result.model.adapted_state_dict()
    torch.testing.assert_close(state["0.weight"], result.model.params["0.weight"].detach())


def test_progress_bars(capsys):
    model = mlp(0)
    result = checkpointed(model, mse, memmaml.SGD(0.1), 2, {})(regression_batches(3), progress=True)
    mse(result.model, regression_batches(1)[0]).backward()
    err = capsys.readouterr().err
    assert "memmaml forward" in err and "memmaml replay" in err
