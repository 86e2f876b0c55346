"""Task sources for meta-training: few-shot regression and classification tasks.

A task is a pair of batches, ``Task(support, query)``: the inner loop adapts on
the support set and the meta-loss is measured on the query set. A task source
turns an integer seed into one task, deterministically::

    source = Sinusoid(num_shots=10)
    task = source.sample(seed=123)           # the same task on every call and machine
    batch = source.sample_batch([1, 2, 3])   # three tasks stacked along a new first dim

Seeds, not a shared random stream, identify tasks. A meta-training loop draws
one seed per task from its own generator (:func:`draw_seeds`), so a process
that handles only a share of a meta-batch builds exactly its own tasks, a
resumed run sees the tasks it would have seen, and a held-out set is a fixed
list of seeds.

Sources
    * :class:`Sinusoid` -- regression on ``y = A sin(x - phi)`` (Finn, Abbeel,
      Levine 2017, "Model-Agnostic Meta-Learning", section 5.1: amplitude
      ``U[0.1, 5]``, phase ``U[0, pi]``, ``x ~ U[-5, 5]``, K shots).
    * :class:`SyntheticClassification` -- N-way K-shot classification of
      Gaussian clusters drawn from a fixed pool of classes (no files needed).
    * :class:`ImageFolderTasks` -- N-way K-shot classification from a folder
      with one subfolder of images per class.
    * :class:`Omniglot` -- N-way K-shot Omniglot (Lake et al. 2015) in the
      layout ``torchvision.datasets.Omniglot`` uses (``download=True`` fetches
      it through torchvision): Finn et al.'s 1,100 / 100 / 423-character split
      (``split="train"/"val"/"test"``) or Lake's background/evaluation sets.
    * :class:`CIFARFS` -- CIFAR-FS (Bertinetto et al. 2019), 64 / 16 / 20
      CIFAR-100 classes; :class:`FC100` -- FC100 (Oreshkin et al. 2018), 12 /
      4 / 4 CIFAR-100 superclasses. Both read torchvision's
      ``cifar-100-python`` files (``download=True`` fetches them).
    * :class:`MiniImageNet` -- miniImageNet with Ravi & Larochelle's
      ``train.csv``/``val.csv``/``test.csv`` over a folder of images (no
      download).
    * :class:`Digits` -- scikit-learn's 8x8 digits, shipped in its wheel: an
      image benchmark that runs offline (digits 0-4 train, 5-9 test).

The named datasets split by class (their splits are checked to be disjoint)
and share the interface ``Source(root, num_ways, num_shots, num_query, *,
split=..., download=...)``. A missing dataset raises
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) with a one-line
message naming the folder to fill and what to put there.

Classification tasks label their ``num_ways`` classes ``0 .. num_ways-1`` in a
random order per task; support and query sets hold disjoint examples.

Losses and metrics matching the sources: :func:`mse_loss`,
:func:`cross_entropy_loss`, :func:`accuracy`; each has the signature
``fn(model, batch) -> 0-d tensor`` that :func:`memmaml.unroll` expects.
"""

from ._base import IMAGE_EXTENSIONS, Task, TaskSource, accuracy, cross_entropy_loss, draw_seeds, mse_loss
from ._cifar import CIFARFS, FC100
from ._classification import ImageFolderTasks, SyntheticClassification
from ._datasets import SPLITS, DatasetNotFoundError
from ._digits import DIGITS_SPLIT, Digits
from ._mini_imagenet import MiniImageNet
from ._omniglot import Omniglot, finn_split
from ._sinusoid import Sinusoid

__all__ = [
    "CIFARFS",
    "DIGITS_SPLIT",
    "DatasetNotFoundError",
    "Digits",
    "FC100",
    "IMAGE_EXTENSIONS",
    "ImageFolderTasks",
    "MiniImageNet",
    "Omniglot",
    "SPLITS",
    "Sinusoid",
    "SyntheticClassification",
    "Task",
    "TaskSource",
    "accuracy",
    "cross_entropy_loss",
    "draw_seeds",
    "finn_split",
    "mse_loss",
]
