"""The networks memmaml's scripts, notebooks, benchmarks and tests build.

Three builders, each returning a freshly initialised ``nn.Module`` (the
caller seeds ``torch.manual_seed`` first for reproducible weights and moves
it with ``.to(device, dtype)``):

* :func:`resnet18` -- torchvision's ResNet-18, the seed demo's model;
* :func:`conv4` -- the four-block convolutional network of few-shot MAML
  (Finn, Abbeel & Levine 2017; Vinyals et al. 2016);
* :func:`mlp` -- fully connected layers (sinusoid regression, tests).

Layouts are plain ``nn.Sequential`` stacks where possible, so parameter names
(``"0.weight"``, ...) are stable and a saved ``state_dict`` loads into a model
built again with the same arguments. No builder downloads anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import nn

from ._checks import number_in, positive_int

__all__ = ["conv4", "mlp", "resnet18"]


def resnet18(num_classes: int = 10, *, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with random weights (``weights=None``; never downloads).

    With ``in_channels != 3`` the first convolution is replaced by a freshly
    initialised ``Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3,
    bias=False)`` after the network is built (so the other layers get the same
    random weights as the 3-channel model under the same seed). With 10
    classes the model has 11,181,642 parameters (42.7 MB in float32).

    Args:
        num_classes: outputs of the final linear layer.
        in_channels: channels of the input images.

    Returns:
        ``torchvision.models.ResNet``; it takes ``(batch, in_channels, H, W)``
        and returns logits ``(batch, num_classes)``.

    Raises:
        ValueError: ``num_classes`` or ``in_channels`` is not a positive integer.

    Example:
        >>> model = resnet18(num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        11181642
        >>> resnet18(5, in_channels=1).conv1
        Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
    """
    num_classes = positive_int("num_classes", num_classes)
    in_channels = positive_int("in_channels", in_channels)
    import torchvision  # imported here: the other builders do not need it

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, Sequence) and not isinstance(image_size, str):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an integer or a pair (height, width), got {image_size!r}")
        return positive_int("image_size[0]", image_size[0]), positive_int("image_size[1]", image_size[1])
    size = positive_int("image_size", image_size)
    return size, size


def conv4(
    in_channels: int,
    num_classes: int,
    *,
    image_size: int | Sequence[int],
    filters: int = 64,
    track_running_stats: bool = True,
    ceil_mode: bool = False,
) -> nn.Sequential:
    """The four-block convolutional network of few-shot MAML.

    Four blocks of ``Conv2d(3x3, padding=1) -> BatchNorm2d -> ReLU ->
    MaxPool2d(2)``, then ``Flatten`` and ``Linear(features, num_classes)``,
    as one flat ``nn.Sequential`` (indices 0-15 the blocks, 16 the flatten,
    17 the head). Each pool halves the height and width, rounding down (or up
    with ``ceil_mode=True``); the head's input size is computed from
    ``image_size`` without running the network, so no BatchNorm statistics
    are touched while building.

    Args:
        in_channels: channels of the input images.
        num_classes: outputs of the head.
        image_size: height and width of the input images (an integer for
            square images, or a pair ``(height, width)``).
        filters: channels of every convolution.
        track_running_stats: BatchNorm keeps running statistics (``True``) or
            always normalises with the batch's own (``False``, as in Finn et
            al.'s code; needed under ``torch.func.vmap``).
        ceil_mode: the pools round up, so images smaller than 16 pixels still
            leave a 1x1 map (Finn et al.'s Omniglot 28x28 gives 2x2).

    Returns:
        ``nn.Sequential`` taking ``(batch, in_channels, height, width)`` and
        returning logits ``(batch, num_classes)``.

    Raises:
        ValueError: an argument is not a positive integer, or ``image_size`` is
            too small for four pools with ``ceil_mode=False`` (under 16).

    Example:
        >>> import torch
        >>> model = conv4(1, 5, image_size=28, ceil_mode=True, track_running_stats=False)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 5])
        >>> model[-1]
        Linear(in_features=256, out_features=5, bias=True)
    """
    in_channels = positive_int("in_channels", in_channels)
    num_classes = positive_int("num_classes", num_classes)
    filters = positive_int("filters", filters)
    height, width = _image_size(image_size)
    for _ in range(4):
        height, width = (-(-height // 2), -(-width // 2)) if ceil_mode else (height // 2, width // 2)
    if height < 1 or width < 1:
        raise ValueError(
            f"image_size must be at least 16 for four 2x2 max-pools with ceil_mode=False, "
            f"got {image_size!r} (pass ceil_mode=True for smaller images)"
        )
    layers: list[nn.Module] = []
    for block in range(4):
        layers += [
            nn.Conv2d(in_channels if block == 0 else filters, filters, 3, padding=1),
            nn.BatchNorm2d(filters, track_running_stats=track_running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=ceil_mode),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters * height * width, num_classes))


def mlp(
    sizes: Sequence[int],
    *,
    activation: Callable[[], nn.Module] = nn.ReLU,
    flatten: bool = False,
    norm: Callable[[int], nn.Module] | None = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, with an activation between them.

    The layout is ``[Flatten] Linear [norm] activation [Dropout] Linear ...
    Linear``: every hidden layer gets (in this order) the optional norm, a
    fresh ``activation()`` and the optional dropout; the last ``Linear`` gets
    nothing after it.

    Args:
        sizes: the widths, inputs first and outputs last (at least two).
        activation: called with no arguments for each hidden layer's activation
            (a module class such as ``nn.ReLU`` or ``nn.Tanh``).
        flatten: prepend ``nn.Flatten()`` (for image inputs).
        norm: called with a hidden layer's width to make its normalisation
            (e.g. ``nn.BatchNorm1d``); ``None`` for none.
        dropout: dropout probability after each hidden activation (0: no
            dropout layers).

    Returns:
        ``nn.Sequential`` mapping ``(batch, sizes[0])`` to ``(batch, sizes[-1])``.

    Raises:
        ValueError: fewer than two sizes, a size that is not a positive integer,
            or ``dropout`` outside ``[0, 1)``.
        TypeError: ``activation`` or ``norm`` is not callable.

    Example:
        >>> import torch
        >>> model = mlp([1, 40, 40, 1])
        >>> model
        Sequential(
          (0): Linear(in_features=1, out_features=40, bias=True)
          (1): ReLU()
          (2): Linear(in_features=40, out_features=40, bias=True)
          (3): ReLU()
          (4): Linear(in_features=40, out_features=1, bias=True)
        )
        >>> mlp([28 * 28, 64, 10], flatten=True)(torch.randn(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"sizes must be a sequence of at least two widths (inputs and outputs), got {sizes!r}")
    sizes = [positive_int(f"sizes[{i}]", size) for i, size in enumerate(sizes)]
    if not callable(activation):
        raise TypeError(
            f"activation must be callable (a module class such as nn.ReLU), got {type(activation).__name__}"
        )
    if norm is not None and not callable(norm):
        raise TypeError(
            f"norm must be callable with a width (such as nn.BatchNorm1d) or None, got {type(norm).__name__}"
        )
    dropout = number_in("dropout", dropout, 0.0, 1.0)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            if norm is not None:
                layers.append(norm(fan_out))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
