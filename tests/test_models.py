"""memmaml.models: parameter counts, shapes, layouts against the builders it replaces, bad input."""

import functools

import pytest
import torch
from torch import nn

from memmaml import models


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    """Same layout (names, shapes) and, built under the same seed, the same values."""
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------- resnet18
def test_resnet18_parameter_count_and_output():
    model = models.resnet18()
    assert count(model) == 11_181_642  # 42.7 MiB of float32 weights
    assert model.fc.out_features == 10
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_resnet18_in_channels_replaces_only_the_first_convolution():
    torch.manual_seed(0)
    rgb = models.resnet18(5)
    torch.manual_seed(0)
    grey = models.resnet18(5, in_channels=1)
    assert grey.conv1.in_channels == 1 and grey.conv1.bias is None
    assert count(rgb) - count(grey) == 2 * 64 * 7 * 7  # one input channel instead of three
    # the rest of the network is initialised as in the 3-channel model (conv1 is replaced afterwards)
    torch.testing.assert_close(grey.fc.weight, rgb.fc.weight, rtol=0, atol=0)
    with torch.no_grad():
        assert grey.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)


# ---------------------------------------------------------------------------------- conv4
def conv4_reference(channels, num_classes, image_size, width, *, running_stats, ceil_mode):
    """The conv4 builders the scripts carried, in their flat layout (meta_train's)."""
    layers = []
    for i in range(4):
        layers += [
            nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
            nn.BatchNorm2d(width, track_running_stats=running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=ceil_mode),
        ]
    layers.append(nn.Flatten())
    with torch.no_grad():
        features = nn.Sequential(*layers).eval()(torch.zeros(1, channels, image_size, image_size)).shape[1]
    return nn.Sequential(*layers, nn.Linear(features, num_classes)).train()


@pytest.mark.parametrize(
    "running_stats, ceil_mode, image_size",
    [
        (True, False, 84),  # compare_memory's variant, mini-ImageNet size
        (False, True, 28),  # meta_train's variant (Finn et al.), Omniglot size
        (True, True, 5),  # ceil_mode keeps a 1x1 map below 16 pixels
        (False, False, 16),
    ],
)
def test_conv4_matches_the_variants_it_replaces(running_stats, ceil_mode, image_size):
    torch.manual_seed(3)
    reference = conv4_reference(3, 5, image_size, 8, running_stats=running_stats, ceil_mode=ceil_mode)
    torch.manual_seed(3)
    model = models.conv4(3, 5, image_size=image_size, filters=8, track_running_stats=running_stats, ceil_mode=ceil_mode)
    assert_same_weights(model, reference)
    assert repr(model) == repr(reference)
    x = torch.randn(4, 3, image_size, image_size)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_conv4_parameter_count_by_hand():
    # 84 -> 42 -> 21 -> 10 -> 5 pixels: 64 * 5 * 5 = 1600 features
    convs = (3 * 64 * 9 + 64) + 3 * (64 * 64 * 9 + 64)
    norms = 4 * 2 * 64
    head = 1600 * 5 + 5
    assert count(models.conv4(3, 5, image_size=84)) == convs + norms + head == 121_093


def test_conv4_rectangular_images_and_untouched_statistics():
    model = models.conv4(1, 3, image_size=(20, 40), filters=4)
    assert model[-1].in_features == 4 * 1 * 2
    assert model(torch.randn(2, 1, 20, 40)).shape == (2, 3)
    fresh = models.conv4(1, 3, image_size=28)
    # no probing forward pass at build time: BatchNorm statistics are at their initial values
    assert torch.equal(fresh[1].running_var, torch.ones(64)) and int(fresh[1].num_batches_tracked) == 0


# ------------------------------------------------------------------------------------ mlp
def test_mlp_layout_and_shapes():
    model = models.mlp([1, 40, 40, 1])
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert count(model) == (1 * 40 + 40) + (40 * 40 + 40) + (40 * 1 + 1)
    assert model(torch.randn(7, 1)).shape == (7, 1)
    flat = models.mlp((3 * 4 * 4, 10), flatten=True)
    assert isinstance(flat[0], nn.Flatten) and flat(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_mlp_matches_the_test_helpers_variant():
    """tests/helpers.py's mlp: Linear, BatchNorm1d, Tanh, Dropout per hidden layer, float64."""
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip((4, 8, 8), (8, 8, 2))):
        layers.append(nn.Linear(a, b))
        if i < 2:
            layers += [nn.BatchNorm1d(b), nn.Tanh(), nn.Dropout(0.3)]
    reference = nn.Sequential(*layers).double()
    torch.manual_seed(0)
    model = models.mlp((4, 8, 8, 2), activation=nn.Tanh, norm=nn.BatchNorm1d, dropout=0.3).double()
    assert_same_weights(model, reference)
    assert repr(model) == repr(reference)


def test_mlp_norm_with_options():
    model = models.mlp([2, 6, 1], norm=functools.partial(nn.BatchNorm1d, track_running_stats=False))
    assert model[1].num_features == 6 and model[1].running_mean is None


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: models.resnet18(0), ValueError, "num_classes must be a positive integer, got 0"),
        (lambda: models.resnet18(10, in_channels=2.0), ValueError, "in_channels must be a positive integer, got 2.0"),
        (lambda: models.conv4(3, 5, image_size=8), ValueError, "image_size must be at least 16"),
        (lambda: models.conv4(3, 5, image_size=(28,)), ValueError, "image_size must be an integer or a pair"),
        (lambda: models.conv4(3, 5, image_size=(28, 0)), ValueError, r"image_size\[1\] must be a positive integer"),
        (
            lambda: models.conv4(3, 5, image_size=28, filters=-1),
            ValueError,
            "filters must be a positive integer, got -1",
        ),
        (lambda: models.conv4(3, True, image_size=28), ValueError, "num_classes must be a positive integer, got True"),
        (lambda: models.mlp([4]), ValueError, "sizes must be a sequence of at least two widths"),
        (
            lambda: models.mlp(4),
            ValueError,
            r"sizes must be a sequence of at least two widths \(inputs and outputs\), got 4",
        ),
        (lambda: models.mlp([4, 0, 1]), ValueError, r"sizes\[1\] must be a positive integer, got 0"),
        (lambda: models.mlp([4, 1], activation="relu"), TypeError, "activation must be callable"),
        (lambda: models.mlp([4, 1], norm=3), TypeError, "norm must be callable"),
        (lambda: models.mlp([4, 2, 1], dropout=1.0), ValueError, r"dropout must satisfy 0.0 <= dropout < 1.0, got 1.0"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
