"""Task sources: seeded and reproducible, correct support/query splits, image folders and Omniglot offline."""

from __future__ import annotations

import math

import pytest
import torch

from memmaml.tasks import (
    DatasetNotFoundError,
    ImageFolderTasks,
    Omniglot,
    Sinusoid,
    SyntheticClassification,
    Task,
    draw_seeds,
)


def test_draw_seeds_is_reproducible_and_advances():
    g = torch.Generator().manual_seed(0)
    first, second = draw_seeds(g, 4), draw_seeds(g, 4)
    assert first == draw_seeds(torch.Generator().manual_seed(0), 4)
    assert first != second and len(set(first)) == 4
    with pytest.raises(ValueError, match="num_tasks must be a positive integer, got 0"):
        draw_seeds(g, 0)


def test_sinusoid_follows_finn_et_al():
    source = Sinusoid(num_shots=10, dtype=torch.float64)
    task = source.sample(seed=3)
    (xs, ys), (xq, yq) = task
    assert xs.shape == ys.shape == xq.shape == yq.shape == (10, 1)
    assert torch.equal(task.support[0], source.sample(seed=3).support[0])  # same seed, same task
    assert not torch.equal(xs, source.sample(seed=4).support[0])
    # support and query lie on one sinusoid: recover amplitude and phase from the support, check the query
    x, y = torch.cat([xs, xq]).squeeze(1), torch.cat([ys, yq]).squeeze(1)
    design = torch.stack([torch.sin(x), torch.cos(x)], dim=1)  # A sin(x - p) = A cos p sin x - A sin p cos x
    coef = torch.linalg.lstsq(design[:10], y[:10, None]).solution.squeeze(1)
    torch.testing.assert_close(design[10:] @ coef, y[10:])
    amplitude = coef.norm().item()
    phase = math.atan2(-coef[1].item(), coef[0].item())
    assert 0.1 <= amplitude <= 5.0 and 0.0 <= phase <= math.pi
    # over many tasks, the ranges are the published ones
    many = source.sample_batch(range(300))
    xs_all = torch.cat([many.support[0], many.query[0]], 1)
    assert -5.0 <= xs_all.min() < -4.9 and 4.9 < xs_all.max() <= 5.0
    assert many.support[1].abs().max() <= 5.0


def test_sample_batch_stacks_and_selects():
    source = Sinusoid(num_shots=4, num_query=6)
    batch = source.sample_batch([5, 6, 7])
    assert isinstance(batch, Task) and batch.num_tasks == 3
    assert batch.support[0].shape == (3, 4, 1) and batch.query[0].shape == (3, 6, 1)
    one = batch.select(1)
    assert torch.equal(one.query[1], source.sample(6).query[1])
    moved = batch.to(dtype=torch.float64)
    assert moved.support[0].dtype == torch.float64
    with pytest.raises(ValueError, match="at least one task seed"):
        source.sample_batch([])


def test_sinusoid_arguments_are_checked():
    with pytest.raises(ValueError, match="num_shots must be a positive integer, got 0"):
        Sinusoid(num_shots=0)
    with pytest.raises(ValueError, match="amplitude_range must satisfy low <= high"):
        Sinusoid(amplitude_range=(5, 1))
    with pytest.raises(TypeError, match="seed must be an int"):
        Sinusoid().sample(seed=1.5)


def test_synthetic_classification_splits_and_labels():
    shape = dict(num_ways=5, num_shots=2, num_query=3, num_features=6)
    train = SyntheticClassification(num_classes=30, **shape)
    test = SyntheticClassification(num_classes=30, split="test", **shape)
    assert train.num_classes == 24 and test.num_classes == 6
    assert not any(torch.equal(a, b) for a in train.centres for b in test.centres)  # disjoint classes
    with pytest.raises(ValueError, match="num_ways=5 is more than the 4 classes"):
        SyntheticClassification(num_classes=20, split="test", **shape)
    task = train.sample(1)
    assert task.support[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert task.query[1].tolist() == [l for l in range(5) for _ in range(3)]
    # examples of one label cluster around one class centre; different labels around different centres
    centres = [train.centres[(train.centres - task.support[0][2 * l].double()).norm(dim=1).argmin()] for l in range(5)]
    assert len({tuple(c.tolist()) for c in centres}) == 5
    assert torch.equal(train.sample(1).query[0], task.query[0])


# ----------------------------------------------------------------------------- image folders
def write_image(path, value: int, size=(10, 12), mode="RGB"):
    from PIL import Image

    colour = (value, 255 - value, (7 * value) % 256) if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)


def make_image_folder(root, num_classes=6, per_class=5, mode="L"):
    """Class c, image i is a flat image of value 10 * c + i: decoding it tells where it came from."""
    for c in range(num_classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            write_image(folder / f"{i}.png", 10 * c + i, mode=mode)
    (root / "notes.txt").write_text("not a class")
    return root


def test_image_folder_tasks(tmp_path):
    root = make_image_folder(tmp_path / "train")
    source = ImageFolderTasks(root, num_ways=3, num_shots=2, num_query=2, image_size=8, grayscale=True)
    task = source.sample(seed=0)
    assert task.support[0].shape == (6, 1, 8, 8) and task.query[0].shape == (6, 1, 8, 8)
    assert task.support[0].dtype == torch.float32 and task.support[1].dtype == torch.int64
    values = lambda x: (x[:, 0, 0, 0] * 255).round().long().tolist()
    support, query = values(task.support[0]), values(task.query[0])
    for label in range(3):
        ids = [v for v, l in zip(support + query, task.support[1].tolist() + task.query[1].tolist()) if l == label]
        assert len({v // 10 for v in ids}) == 1  # one class per label
        assert len(set(ids)) == 4  # support and query images are different files
    assert torch.equal(source.sample(seed=0).query[0], task.query[0])
    rgb = ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=None)
    assert rgb.sample(1).support[0].shape == (2, 3, 12, 10)
    assert ImageFolderTasks(root, 2, 1, 1, rotations=True).num_classes == 24


def test_image_folder_errors_name_the_problem(tmp_path):
    root = make_image_folder(tmp_path / "data", num_classes=3, per_class=2)
    with pytest.raises(ValueError, match=r"class 'class_0' has 2 examples, fewer than num_shots \+ num_query = 3"):
        ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=2)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ImageFolderTasks(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not in root"):
        ImageFolderTasks(root, classes=["class_0", "class_9"])
    with pytest.raises(ValueError, match="num_ways=4 is more than the 3 classes"):
        ImageFolderTasks(root, num_ways=4, num_shots=1, num_query=1)
    with pytest.raises(ValueError, match="num_ways=4 is more than the 3 classes available before rotation"):
        ImageFolderTasks(root, num_ways=4, num_shots=1, num_query=1, rotations=True)  # 12 rotated classes


def test_an_image_that_cannot_be_decoded_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data", num_classes=2, per_class=2)  # 2-way 1+1 tasks read every file
    whole = (root / "class_1" / "0.png").read_bytes()
    for path, contents in (
        (root / "class_0" / "1.png", b"not a png"),
        (root / "class_1" / "0.png", whole[: len(whole) // 2]),
    ):
        path.write_bytes(contents)
        with pytest.raises(DatasetNotFoundError) as info:
            ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=4).sample(0)
        message = str(info.value)
        assert message.startswith(f"cannot read the image {path} (") and "\n" not in message
        assert "truncated or not an image; replace it with a whole copy or delete it" in message
        path.write_bytes(whole)
    task = ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=4).sample(0)
    assert task.support[0].shape == (2, 3, 4, 4)  # whole files again: read as before
    source = ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=4)
    gone = root / "class_0" / "0.png"
    gone.unlink()  # listed when the source was built, gone when a task reads it: not called damaged
    with pytest.raises(DatasetNotFoundError) as info:
        source.sample(0)
    message = str(info.value)
    assert message.startswith(f"cannot open the image {gone} (FileNotFoundError)") and "truncated" not in message


def test_omniglot_missing_root_names_the_folder_to_fill(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Omniglot(tmp_path)
    message = str(info.value)
    assert f"under {tmp_path / 'omniglot-py'}:" in message and "put images_background/ there" in message
    assert "download=True" in message and "\n" not in message  # one line, for a command line to print
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        Omniglot(tmp_path, background=False)


def test_omniglot_reads_torchvision_layout(tmp_path):
    folder = tmp_path / "omniglot-py" / "images_background"
    for a in range(2):
        for c in range(3):
            character = folder / f"Alphabet_{a}" / f"character{c + 1:02d}"
            character.mkdir(parents=True)
            for i in range(4):
                write_image(character / f"{a}{c}_{i:02d}.png", 40 * a + 10 * c + i, size=(105, 105), mode="L")
    source = Omniglot(tmp_path, num_ways=5, num_shots=1, num_query=2)
    assert source.num_classes == 6 and source.class_names[0] == "Alphabet_0/character01"
    task = source.sample(seed=2)
    assert task.support[0].shape == (5, 1, 28, 28) and task.query[0].shape == (10, 1, 28, 28)
    rotated = Omniglot(tmp_path, num_ways=5, num_shots=1, num_query=2, rotations=True)
    assert rotated.num_classes == 24
    assert rotated.config()["rotations"] is True


def test_per_task_rotations_are_in_the_config_so_older_checkpoints_do_not_resume(tmp_path):
    """Rotations drawn as classes of their own and drawn per task are different task distributions from the same
    seeds: the config, which a resumed run compares, must tell them apart; without rotations nothing changed."""
    root = make_image_folder(tmp_path / "data", num_classes=3, per_class=2)
    rotated = ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=4, rotations=True).config()
    plain = ImageFolderTasks(root, num_ways=2, num_shots=1, num_query=1, image_size=4).config()
    assert rotated["rotation_sampling"] == "per_task" and "rotation_sampling" not in plain
