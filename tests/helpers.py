"""Small models, batches and comparisons shared by the tests (float64 throughout)."""

import torch
from torch import nn

from memmaml import models

DTYPE = torch.float64


def mlp(seed=0, sizes=(4, 8, 8, 2), dropout=0.0, batchnorm=False):
    torch.manual_seed(seed)
    return models.mlp(sizes, activation=nn.Tanh, norm=nn.BatchNorm1d if batchnorm else None, dropout=dropout).to(DTYPE)


def regression_batches(n, in_features=4, out_features=2, size=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, in_features, generator=gen, dtype=DTYPE),
            torch.randn(size, out_features, generator=gen, dtype=DTYPE),
        )
        for _ in range(n)
    ]


def mse(model, batch, scale=1.0):
    x, y = batch[0], batch[1]
    return scale * ((model(x) - y) ** 2).mean()


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def assert_rel_close(actual, expected, rtol=1e-10, what=""):
    """Relative agreement measured against the size of ``expected`` (max-norm)."""
    actual, expected = (
        flat(actual) if isinstance(actual, (list, tuple)) else actual,
        (flat(expected) if isinstance(expected, (list, tuple)) else expected),
    )
    scale = expected.abs().max().clamp_min(1e-300)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative difference {err:.3e} > {rtol:.0e}"
