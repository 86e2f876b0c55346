"""Named datasets on fixtures in their real on-disk formats.

Split sizes, class disjointness, rotation classes, determinism from a seed, downloads passed through
to torchvision (faked here: nothing is fetched), and one self-contained line for each missing file.
The fixtures (tests/fixtures_datasets.py) write images that say where they came from, so a test
decodes every image of a task back to its class.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest
import torch
from fixtures_datasets import (
    CIFAR100_SUPERCLASSES,
    CIFAR_FS_TEST,
    CIFAR_FS_VAL,
    COARSE_NAMES,
    MINI_SPLITS,
    PARENT,
    decode_cifar,
    decode_mini,
    decode_omniglot,
    mini_label,
    omniglot_pattern,
    write_cifar100,
    write_mini_imagenet,
    write_omniglot,
)

from memmaml.tasks import (
    CIFARFS,
    DIGITS_SPLIT,
    FC100,
    SPLITS,
    DatasetNotFoundError,
    Digits,
    MiniImageNet,
    Omniglot,
    finn_split,
)


def one_line(info) -> str:
    """The message of a raised error, checked to be one line (a command line prints it as is)."""
    message = str(info.value)
    assert "\n" not in message and message == message.strip()
    return message


def classes_of(task, decode, key=lambda identity: identity[0]):
    """``{label: class}`` of a task, checking that a label is one class and its examples are distinct."""
    owner, examples = {}, []
    for images, labels in (task.support, task.query):
        for image, label in zip(images, labels.tolist()):
            identity = decode(image)
            assert owner.setdefault(label, key(identity)) == key(identity), "two classes under one label"
            examples.append(identity)
    assert len(set(owner.values())) == len(owner), "one class under two labels"
    assert len(set(examples)) == len(examples), "an example used twice in one task"
    return owner


def assert_same_task(a, b):
    for x, y in zip((*a.support, *a.query), (*b.support, *b.query)):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------------- Omniglot
@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    return root, write_omniglot(root)


def test_omniglot_maml_split_sizes_and_disjoint_classes(omniglot_root):
    root, ids = omniglot_root
    sources = {s: Omniglot(root, 5, 1, 1, split=s, image_size=None) for s in SPLITS}
    assert {s: src.num_classes for s, src in sources.items()} == {"train": 1100, "val": 100, "test": 423}
    names = {s: set(src.class_names) for s, src in sources.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    assert names["train"] | names["val"] | names["test"] == set(ids)  # both of Lake's sets, merged
    assert len(names["train"] | names["val"]) == 1200  # the paper's 1,200 training characters
    assert {s: set(v) for s, v in finn_split(ids).items()} == names
    # the split does not depend on the order a file system lists folders in
    shuffled = list(ids)
    random.Random(0).shuffle(shuffled)
    assert finn_split(shuffled) == finn_split(ids)
    assert sources["test"].config()["split"] == "test" and "background" not in sources["test"].config()


def test_omniglot_rotations_turn_distinct_characters_per_task(omniglot_root):
    """Finn et al.'s protocol: N distinct characters, each in one uniformly random quarter turn drawn per task."""
    root, ids = omniglot_root
    source = Omniglot(root, num_ways=20, num_shots=1, num_query=1, split="test", rotations=True, image_size=None)
    assert source.num_classes == 4 * 423
    test_ids = {ids[name] for name in source.class_names[:423]}
    turn_counts, turns_of, label_orders = Counter(), {}, []
    for seed in range(100):  # drawing 20 of the 1,692 rotated classes would repeat a character in 29% of tasks
        task = source.sample(seed)
        assert task.support[0].shape == (20, 1, 4, 4) and task.query[0].shape == (20, 1, 4, 4)
        owner = classes_of(task, decode_omniglot, key=lambda identity: (identity[0], identity[2]))
        characters = [owner[label][0] for label in range(20)]
        assert len(set(characters)) == 20, f"task {seed} holds two rotations of one character"
        assert set(characters) <= test_ids
        for character, turns in owner.values():
            turn_counts[turns] += 1
            turns_of.setdefault(character, []).append(turns)
        label_orders.append(characters == sorted(characters))
    # every rotation occurs, about equally often (2,000 draws: 500 each, standard deviation 19)
    assert set(turn_counts) == {0, 1, 2, 3} and all(400 < n < 600 for n in turn_counts.values()), turn_counts
    # a character's rotation is drawn per task, not fixed: most characters drawn twice or more were turned differently
    repeated = [turns for turns in turns_of.values() if len(turns) > 1]
    assert sum(len(set(turns)) > 1 for turns in repeated) > len(repeated) / 2
    assert sum(label_orders) < 5  # labels are a random order of the task's characters, not sorted


def test_fixture_images_decode_under_every_rotation():
    """decode_omniglot is exact for every character id (1,623 of them) and every quarter turn."""
    for character in range(1623):
        image = torch.from_numpy(omniglot_pattern(character, 20)).to(torch.float32).unsqueeze(0) / 255
        for turns in range(4):
            assert decode_omniglot(torch.rot90(image, turns, dims=(-2, -1))) == (character, 20, turns)


def test_omniglot_same_seed_same_task(omniglot_root):
    root, _ = omniglot_root
    a = Omniglot(root, 5, 1, 1, split="train", rotations=True)
    b = Omniglot(root, 5, 1, 1, split="train", rotations=True)
    assert a.sample(3).support[0].shape == (5, 1, 28, 28)  # Finn et al.'s 28x28 by default
    assert_same_task(a.sample(3), b.sample(3))  # another instance, the same task
    assert_same_task(a.sample(3), a.sample(3))
    assert not torch.equal(a.sample(3).query[0], a.sample(4).query[0])


def test_finn_split_is_pinned():
    names = [f"A{a:02d}/c{c:02d}" for a in range(50) for c in range(33)][:1623]
    split = finn_split(names)
    assert [len(split[s]) for s in SPLITS] == [1100, 100, 423]
    # what Finn et al.'s `random.seed(1); random.shuffle(folders)` gives under Python 2.7.18 on the sorted
    # list (run there once: x[1100:1103] and x[-1]); Python 3.10's shuffle(x, random.random) agrees
    assert split["val"][:3] == ["A44/c03", "A15/c13", "A32/c32"] and split["test"][-1] == "A06/c20"
    py3 = sorted(names)
    random.Random(1).shuffle(py3)  # Python 3's default shuffle draws differently
    assert py3[:1100] != split["train"]


def test_omniglot_lakes_sets_keep_the_old_interface(omniglot_root):
    root, _ = omniglot_root
    old = Omniglot(root, 5, 1, 1, background=True, image_size=None)
    new = Omniglot(root, 5, 1, 1, split="background", image_size=None)
    assert old.num_classes == new.num_classes == 964 and old.class_names == new.class_names
    assert Omniglot(root, 5, 1, 1, background=False, image_size=None).num_classes == 659
    assert Omniglot(root, 5, 1, 1, image_size=None).split == "background"
    assert set(old.config()) == {"source", "root", "background", *old._image_config()}  # checkpoints resume
    with pytest.raises(ValueError, match="pass split or background, not both"):
        Omniglot(root, split="train", background=True)
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', 'test', 'background', 'evaluation'"):
        Omniglot(root, split="validation")


def test_omniglot_missing_files_name_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        Omniglot(tmp_path, split="train")
    message = one_line(info)
    assert message.startswith(f"Omniglot not found under {tmp_path / 'omniglot-py'}: pass download=True")
    assert "put images_background/ and images_evaluation/ there" in message
    assert isinstance(info.value, FileNotFoundError)

    write_omniglot(tmp_path, sets=("images_background",))
    with pytest.raises(DatasetNotFoundError, match=r"or put images_evaluation/ there \(the alphabet"):
        Omniglot(tmp_path, split="test")
    Omniglot(tmp_path, 5, 1, 1, split="background")  # Lake's background set alone is enough for itself

    write_omniglot(tmp_path / "partial")
    character = next((tmp_path / "partial" / "omniglot-py" / "images_evaluation").glob("*/character01"))
    shutil.rmtree(character)
    with pytest.raises(DatasetNotFoundError) as info:
        Omniglot(tmp_path / "partial", split="val")
    assert "has 1622 characters with images, but split='val' (Finn et al.'s protocol) needs all 1,623" in one_line(info)

    empty = tmp_path / "empty" / "omniglot-py" / "images_evaluation"
    empty.mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="holds no <alphabet>/<character>/\\*.png images"):
        Omniglot(tmp_path / "empty", split="evaluation")


def test_omniglot_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeOmniglot:  # what torchvision.datasets.Omniglot(download=True) leaves behind, without a network
        def __init__(self, root, background=True, download=False):
            calls.append((root, background, download))
            write_omniglot(tmp_path, sets=("images_background" if background else "images_evaluation",))

    monkeypatch.setattr(torchvision.datasets, "Omniglot", FakeOmniglot)
    source = Omniglot(tmp_path, 5, 1, 1, split="val", download=True, image_size=None)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert source.num_classes == 100
    Omniglot(tmp_path, 5, 1, 1, split="test", download=True)  # already there: nothing fetched again
    assert len(calls) == 2

    class Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "Omniglot", Offline)
    with pytest.raises(DatasetNotFoundError) as info:
        Omniglot(tmp_path / "offline", split="train", download=True)
    assert "download of images_background.zip into" in one_line(info) and "name resolution" in str(info.value)


def test_omniglot_extracts_a_zip_torchvision_left(tmp_path):
    write_omniglot(tmp_path, sets=("images_evaluation",))
    base = tmp_path / "omniglot-py"
    shutil.make_archive(str(base / "images_evaluation"), "zip", root_dir=base, base_dir="images_evaluation")
    shutil.rmtree(base / "images_evaluation")
    assert Omniglot(tmp_path, 5, 1, 1, split="evaluation", image_size=None).num_classes == 659


def write_small_set(base, name="images_evaluation", characters=3):
    """A few characters of one of Lake's sets under ``base`` (a set read alone has no required count)."""
    from PIL import Image

    for c in range(characters):
        folder = base / name / "Alphabet_e00" / f"character{c + 1:02d}"
        folder.mkdir(parents=True)
        for d in range(2):
            Image.fromarray(omniglot_pattern(c, d + 1), mode="L").save(folder / f"{c:04d}_{d + 1:02d}.png")


def test_omniglot_corrupt_zip_names_the_file_to_replace(tmp_path, monkeypatch):
    import zipfile

    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("nothing is downloaded here")

    monkeypatch.setattr(torchvision.datasets, "Omniglot", no_network)
    base = tmp_path / "omniglot-py"
    base.mkdir()
    archive = base / "images_evaluation.zip"
    archive.write_bytes(b"PK\x03\x04 the first bytes of an interrupted download")
    with pytest.raises(DatasetNotFoundError) as info:
        Omniglot(tmp_path, split="evaluation")
    message = one_line(info)
    assert message.startswith(f"Omniglot: {archive} is not a readable zip file (BadZipFile: ")
    assert "delete it and pass download=True, or replace it with images_evaluation.zip from" in message
    assert archive.is_file()  # without download=True the user's file stays

    # a zip whose last file is damaged: the files extracted before it are removed again, not read next time
    write_small_set(tmp_path / "whole")
    shutil.make_archive(
        str(base / "images_evaluation"), "zip", root_dir=tmp_path / "whole", base_dir="images_evaluation"
    )
    with zipfile.ZipFile(archive) as z:
        last = max((i for i in z.infolist() if not i.is_dir()), key=lambda i: i.header_offset)
    data = bytearray(archive.read_bytes())
    start = last.header_offset + 30 + int.from_bytes(data[last.header_offset + 26 : last.header_offset + 28], "little")
    start += int.from_bytes(data[last.header_offset + 28 : last.header_offset + 30], "little")
    data[start : start + last.compress_size] = bytes(range(256)) * (last.compress_size // 256) + bytes(
        last.compress_size % 256
    )
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetNotFoundError, match="images_evaluation.zip is not a readable zip file"):
        Omniglot(tmp_path, split="evaluation")
    assert not (base / "images_evaluation").exists()

    # with download=True the corrupt zip is deleted and fetched again through torchvision
    seen = []

    class FakeOmniglot:
        def __init__(self, root, background=True, download=False):
            seen.append((background, download, archive.exists()))
            write_small_set(base)

    monkeypatch.setattr(torchvision.datasets, "Omniglot", FakeOmniglot)
    source = Omniglot(tmp_path, 2, 1, 1, split="evaluation", download=True, image_size=None)
    assert seen == [(False, True, False)] and source.num_classes == 3


def test_torchvision_omniglot_refuses_extracted_folders(omniglot_root):
    """Why Omniglot reads the folders itself: torchvision checks the zip files' md5, not the folders."""
    import torchvision.datasets

    with pytest.raises(RuntimeError, match="Dataset not found or corrupted"):
        torchvision.datasets.Omniglot(str(omniglot_root[0]), background=True)


# ------------------------------------------------------------------------------ CIFAR-100
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"))


@pytest.mark.parametrize("source, sizes", [(CIFARFS, (64, 16, 20)), (FC100, (60, 20, 20))])
def test_cifar_split_sizes_and_disjoint_classes(cifar_root, source, sizes):
    splits = {s: source(cifar_root, 5, 2, 2, split=s) for s in SPLITS}
    assert tuple(splits[s].num_classes for s in SPLITS) == sizes
    names = {s: set(src.class_names) for s, src in splits.items()}
    assert sum(len(n) for n in names.values()) == len(set.union(*names.values())) == 100
    assert {s: sorted(n) for s, n in names.items()} == source.split_classes()


def test_fc100_splits_by_superclass(cifar_root):
    supers = FC100.split_superclasses()
    assert [len(supers[s]) for s in SPLITS] == [12, 4, 4]
    assert sorted(supers["train"] + supers["val"] + supers["test"]) == COARSE_NAMES  # each superclass once
    assert supers["test"] == ["aquatic_mammals", "insects", "medium_mammals", "people"]
    assert supers["val"] == [
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    ]
    for split in SPLITS:
        source = FC100(cifar_root, 5, 1, 1, split=split)
        assert source.superclasses == supers[split]
        assert {PARENT[name] for name in source.class_names} == set(supers[split])  # whole superclasses


def test_shipped_class_tables_match_independent_copies():
    from memmaml.tasks._datasets import read_split_file

    assert read_split_file("cifar100.json")["superclasses"] == CIFAR100_SUPERCLASSES
    classes = CIFARFS.split_classes()
    # Bertinetto et al.'s val.txt and test.txt, as independent public copies list them
    assert classes["val"] == sorted(CIFAR_FS_VAL) and classes["test"] == sorted(CIFAR_FS_TEST)
    cited = {"cifar100.json": "Krizhevsky 2009", "cifar_fs.json": "Bertinetto", "fc100.json": "Oreshkin"}
    for name, author in cited.items():
        assert author in read_split_file(name)["source"]  # each list says where it comes from


@pytest.mark.parametrize("source", [CIFARFS, FC100])
def test_cifar_tasks_hold_their_split_classes_from_both_files(cifar_root, source):
    test = source(cifar_root, num_ways=5, num_shots=2, num_query=2, split="test")
    allowed = set(source.split_classes()["test"])
    used = set()
    for seed in range(3):
        task = test.sample(seed)
        assert task.support[0].shape == (10, 3, 32, 32) and task.query[0].shape == (10, 3, 32, 32)
        assert task.support[0].dtype == torch.float32 and 0 <= task.support[0].min() <= task.support[0].max() <= 1
        owner = classes_of(task, decode_cifar)
        assert set(owner.values()) <= allowed
        used |= {(name, marker) for name, marker, _ in map(decode_cifar, torch.cat([task.support[0], task.query[0]]))}
    assert {marker for _, marker in used} == {0, 1}  # a class's images come from CIFAR-100's train and test files
    assert_same_task(test.sample(7), source(cifar_root, 5, 2, 2, split="test").sample(7))
    assert not torch.equal(test.sample(7).support[0], test.sample(8).support[0])
    small = source(cifar_root, 5, 1, 1, split="val", image_size=16, transform=lambda x: x * 2, dtype=torch.float64)
    image = small.sample(0).support[0]
    assert image.shape == (5, 3, 16, 16) and image.dtype == torch.float64 and image.max() > 1
    assert json.loads(json.dumps(small.config()))["split"] == "val"


def test_cifar_missing_or_wrong_files(tmp_path, cifar_root):
    with pytest.raises(DatasetNotFoundError) as info:
        CIFARFS(tmp_path)
    message = one_line(info)
    assert f"CIFAR-100 not found under {tmp_path / 'cifar-100-python'} (missing: train, test, meta)" in message
    assert "download=True" in message and "cifar-100-python.tar.gz" in message and f"into {tmp_path}" in message

    partial = tmp_path / "partial"
    shutil.copytree(cifar_root, partial)
    (partial / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"\(missing: meta\)"):
        FC100(partial)
    (partial / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="is not a CIFAR-100 pickle"):
        FC100(partial)

    def relabel(name, contents):  # a superclass label that is not the class's superclass
        if name == "test":
            contents["coarse_labels"][0] = (contents["coarse_labels"][0] + 1) % 20

    write_cifar100(tmp_path / "relabelled", edit=relabel)
    with pytest.raises(ValueError, match="1 images have a superclass label that is not their class's"):
        FC100(tmp_path / "relabelled")

    def rename(name, contents):
        if name == "meta":
            contents["fine_label_names"][0] = "aple"

    write_cifar100(tmp_path / "renamed", edit=rename)
    with pytest.raises(ValueError, match="does not name CIFAR-100's 100 classes"):
        CIFARFS(tmp_path / "renamed")


def test_cifar_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_cifar100(tmp_path)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    assert CIFARFS(tmp_path, 5, 1, 1, split="val", download=True).num_classes == 16
    assert FC100(tmp_path, 5, 1, 1, split="val", download=True).num_classes == 20
    assert calls == [(str(tmp_path), False, True)]  # the second found the files


def test_torchvision_cifar100_refuses_fixtures(cifar_root):
    """Why CIFAR-FS and FC100 read the pickles themselves: torchvision checks every file's md5."""
    import torchvision.datasets

    with pytest.raises(RuntimeError, match="Dataset not found or corrupted"):
        torchvision.datasets.CIFAR100(str(cifar_root), train=False)


# ---------------------------------------------------------------------------- miniImageNet
@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return write_mini_imagenet(tmp_path_factory.mktemp("mini"))


def test_mini_imagenet_splits_and_tasks(mini_root):
    sources = {s: MiniImageNet(mini_root, num_ways=3, num_shots=1, num_query=2, split=s, image_size=8) for s in SPLITS}
    assert {s: src.num_classes for s, src in sources.items()} == MINI_SPLITS
    names = {s: set(src.class_names) for s, src in sources.items()}
    assert sum(map(len, names.values())) == len(set.union(*names.values())) == 100
    assert names["val"] == {mini_label(n) for n in range(64, 80)}  # labels as the CSV names them
    task = sources["test"].sample(2)
    assert task.support[0].shape == (3, 3, 8, 8) and task.query[0].shape == (6, 3, 8, 8)
    assert set(classes_of(task, decode_mini).values()) <= names["test"]
    assert_same_task(task, MiniImageNet(mini_root, 3, 1, 2, split="test", image_size=8).sample(2))
    assert MiniImageNet(mini_root, 3, 1, 1).sample(0).support[0].shape == (3, 3, 84, 84)  # Finn et al.'s size
    assert json.loads(json.dumps(sources["val"].config()))["split"] == "val"


def test_mini_imagenet_missing_files_name_what_to_fetch(tmp_path, mini_root):
    with pytest.raises(DatasetNotFoundError) as info:
        MiniImageNet(tmp_path)
    message = one_line(info)
    assert f"miniImageNet not found under {tmp_path} (missing: train.csv, val.csv, test.csv, images/)" in message
    assert "no automatic download" in message and "github.com/twitter/meta-learning-lstm" in message
    assert f"in {tmp_path / 'images'}/" in message
    with pytest.raises(DatasetNotFoundError, match=r"\(download=True cannot fetch it\)"):
        MiniImageNet(tmp_path, download=True)

    copy = tmp_path / "copy"
    shutil.copytree(mini_root, copy)
    (copy / "images" / f"{mini_label(0)}00000002.jpg").unlink()
    MiniImageNet(copy, 3, 1, 1, split="test", image_size=8)  # another split's image: this one is complete
    with pytest.raises(DatasetNotFoundError) as info:
        MiniImageNet(copy, split="train")
    assert f"1 of the 192 images train.csv names are missing from {copy / 'images'}/" in one_line(info)

    (copy / "val.csv").write_text("filename,label\nn0000000000000001.jpg,n00000000\n")  # a training class
    with pytest.raises(ValueError, match="miniImageNet: the train and val splits share 1 classes"):
        MiniImageNet(copy, split="test")
    (copy / "val.csv").write_text("image,class\n")
    with pytest.raises(ValueError, match="must start with the header 'filename,label'"):
        MiniImageNet(copy, split="test")


def test_mini_imagenet_csvs_must_hold_ravi_and_larochelle_s_64_16_20_classes(tmp_path):
    """The class counts are checked before any image is read: CSV files and an empty images/ suffice."""

    def write_csvs(root, counts, first=0):
        (root / "images").mkdir(parents=True)
        number = first
        for split, count in counts.items():
            rows = ["filename,label"]
            for _ in range(count):
                rows += [f"{mini_label(number)}{i:08d}.jpg,{mini_label(number)}" for i in (1, 2)]
                number += 1
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        return root

    with pytest.raises(DatasetNotFoundError, match="images train.csv names are missing"):  # counts right
        MiniImageNet(write_csvs(tmp_path / "ravi", MINI_SPLITS))
    root = write_csvs(tmp_path / "short", {"train": 64, "val": 16, "test": 19})
    with pytest.raises(ValueError) as info:
        MiniImageNet(root, split="train")  # any split: the three files are checked together
    message = one_line(info)
    assert f"miniImageNet under {root}: Ravi & Larochelle's train.csv, val.csv and test.csv name 64, 16" in message
    assert "but test.csv has 19 (get the files from https://github.com/twitter/meta-learning-lstm" in message
    root = write_csvs(tmp_path / "tiny", {"train": 6, "val": 3, "test": 5})
    with pytest.raises(ValueError, match=r"but train.csv has 6 and val.csv has 3 and test.csv has 5 \("):
        MiniImageNet(root, split="test")
    shared = write_csvs(tmp_path / "shared", MINI_SPLITS)
    (shared / "test.csv").write_text((shared / "test.csv").read_text() + f"x.jpg,{mini_label(0)}\n")
    with pytest.raises(ValueError, match="the train and test splits share 1 classes"):
        MiniImageNet(shared, split="val")  # 21 test classes, one of them a training class: the overlap is named


# ------------------------------------------------------------------------------- digits
def test_digits_default_split_allows_5_way_tests():
    from sklearn.datasets import load_digits

    assert DIGITS_SPLIT == {"train": (0, 1, 2, 3, 4), "val": (), "test": (5, 6, 7, 8, 9)}
    train, test = Digits(5, 1, 3), Digits(5, 1, 3, split="test")
    assert train.class_names == ["0", "1", "2", "3", "4"] and test.class_names == ["5", "6", "7", "8", "9"]
    digits = load_digits()
    reference = {d: torch.as_tensor(digits.images[digits.target == d] / 16.0, dtype=torch.float32) for d in range(10)}

    def decode(image):  # (digit, index of the image among that digit's)
        for d, images in reference.items():
            hits = (images == image[0]).flatten(1).all(1).nonzero().flatten().tolist()
            if hits:
                return d, hits[0]
        raise AssertionError("not a digits image")

    for source, allowed in ((train, {0, 1, 2, 3, 4}), (test, {5, 6, 7, 8, 9})):
        task = source.sample(11)
        assert task.support[0].shape == (5, 1, 8, 8) and task.query[1].tolist() == [
            l for l in range(5) for _ in range(3)
        ]
        assert set(classes_of(task, decode).values()) == allowed  # 5-way: all five digits of the split
    assert_same_task(test.sample(5), Digits(5, 1, 3, split="test").sample(5))
    labellings = {tuple(classes_of(test.sample(seed), decode).items()) for seed in range(4)}
    assert len(labellings) > 1  # the same five digits, labelled in a new order per task
    with pytest.raises(ValueError, match=r"Digits has no val classes .*\(5-way test tasks need 5 test digits\)"):
        Digits(split="val")


def test_digits_class_split_and_options():
    three_ways = {"train": range(6), "val": (6, 7), "test": (8, 9)}
    val = Digits(2, 5, 5, split="val", class_split=three_ways)
    assert val.class_names == ["6", "7"] and val.config()["class_split"]["train"] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="Digits: the train and test splits share 1 classes"):
        Digits(class_split={"train": (0, 1), "test": (1, 2)})
    with pytest.raises(ValueError, match=r"class_split\['test'\] must hold digits 0..9, got \[10\]"):
        Digits(class_split={"train": (0,), "test": (10,)})
    with pytest.raises(ValueError, match="num_ways=5 is more than the 2 classes"):
        Digits(5, split="test", class_split=three_ways)
    with pytest.raises(ValueError, match="class '0' has 178 examples, fewer than num_shots \\+ num_query = 200"):
        Digits(5, 100, 100)
    assert Digits(5, 1, 1, flatten=True, dtype=torch.float64).sample(0).support[0].shape == (5, 64)
    assert Digits(5, 1, 1, image_size=16).sample(0).query[0].shape == (5, 1, 16, 16)
    assert json.loads(json.dumps(Digits().config())) == Digits().config()


def test_digits_rotations_are_new_classes_of_the_same_split():
    """Rotations as classes of their own (NOTE [ Rotated digits are new classes ]), unlike Omniglot's per-task turn."""
    plain = {split: Digits(5, 1, 3, split=split) for split in ("train", "test")}
    rotated = {split: Digits(5, 1, 3, split=split, rotations=True) for split in ("train", "test")}
    for split, digits in (("train", range(5)), ("test", range(5, 10))):
        source = rotated[split]
        assert source.num_classes == 20 and len(source.class_names) == 20
        assert source.class_names[:5] == [str(d) for d in digits]  # Omniglot's order: the digits, then each turn
        assert source.class_names[5 * 3 + 4] == f"{digits[4]} rotated by 270 degrees"
        for turns in range(4):
            for d in range(5):
                images = source.class_images[5 * turns + d]
                assert torch.equal(images, torch.rot90(plain[split].class_images[d], turns, dims=(-2, -1)))
        assert source.config()["rotations"] and not plain[split].config()["rotations"]
    train_digits = {name.split()[0] for name in rotated["train"].class_names}
    test_digits = {name.split()[0] for name in rotated["test"].class_names}
    assert train_digits == {"0", "1", "2", "3", "4"} and not train_digits & test_digits  # rotations stay in their split
    assert not set(rotated["train"].class_names) & set(rotated["test"].class_names)

    # a task's example of class "d rotated by k*90" is exactly torch.rot90 of an image of digit d
    from sklearn.datasets import load_digits

    data = load_digits()
    reference = torch.as_tensor(data.images / 16.0, dtype=torch.float32)
    targets = torch.as_tensor(data.target)

    turned = [torch.rot90(reference, turns, dims=(-2, -1)).flatten(1) for turns in range(4)]

    def decode(image):  # (digit, quarter turns, index among all images)
        for turns in range(4):
            hits = (turned[turns] == image[0].flatten()).all(1).nonzero().flatten()
            if len(hits):
                return int(targets[hits[0]]), turns, int(hits[0])
        raise AssertionError("not a (rotated) digits image")

    seen, repeats = set(), 0
    for split, digits in (("train", range(5)), ("test", range(5, 10))):
        for seed in range(12):
            owner = classes_of(rotated[split].sample(seed), decode, key=lambda identity: identity[:2])
            assert {d for d, _ in owner.values()} <= set(digits)  # a rotation stays in its digit's split
            repeats += len({d for d, _ in owner.values()}) < 5
            seen.update(owner.values())
    assert {turns for _, turns in seen} == {0, 1, 2, 3}  # every rotation is drawn
    # five of the 20 classes, not five digits: two rotations of one digit in a task (93% of 5-way tasks)
    assert repeats > 12, repeats
    # num_ways up to the 20 classes: 6-way tasks hold some digit twice, 20-way tasks every rotation of every digit
    six = classes_of(Digits(6, 1, 2, split="test", rotations=True).sample(3), decode, key=lambda identity: identity[:2])
    assert len(six) == 6 and len({d for d, _ in six.values()}) < 6 and {d for d, _ in six.values()} <= set(range(5, 10))
    every = classes_of(Digits(20, 1, 1, rotations=True).sample(0), decode, key=lambda identity: identity[:2])
    assert sorted(every.values()) == [(d, turns) for d in range(5) for turns in range(4)]
    with pytest.raises(ValueError, match=r"num_ways=21 is more than the 20 classes available$"):
        Digits(21, 1, 1, rotations=True)
    assert_same_task(rotated["test"].sample(7), Digits(5, 1, 3, split="test", rotations=True).sample(7))
    assert not torch.equal(rotated["test"].sample(7).support[0], rotated["test"].sample(8).support[0])
    flat = Digits(5, 1, 3, split="test", rotations=True, flatten=True, dtype=torch.float64).sample(7)
    assert torch.equal(flat.support[0], rotated["test"].sample(7).support[0].flatten(1).double())
    assert Digits(5, 1, 1, rotations=True, image_size=16).sample(0).query[0].shape == (5, 1, 16, 16)
    with pytest.raises(TypeError, match="rotations must be True or False, got 1"):
        Digits(rotations=1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_rotations_sample_as_the_stored_results_were_measured(split):
    """Bit for bit the sampling of memmaml 0.2.0, with which benchmarks/few_shot/digits/ was measured.

    The reference is written out here from scikit-learn's arrays, not from the source's classes: the task's
    generator, ``torch.randperm`` over all 20 classes for the task's classes (class ``5 * t + i`` is the split's
    ``i``-th digit turned ``t`` times), then per class ``torch.randperm`` over its images for the support and
    query examples. Omniglot's sampling (NOTE [ Rotations are drawn per task ]) would draw differently.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.as_tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    targets = torch.as_tensor(data.target)
    digits = DIGITS_SPLIT[split]
    repeats = 0
    for ways, shots, query, flatten in ((5, 1, 15, True), (5, 5, 15, False), (8, 2, 3, False)):
        source = Digits(ways, shots, query, split=split, rotations=True, flatten=flatten)
        for seed in (0, 1, 2, 7, 2026):
            generator = torch.Generator().manual_seed(seed)
            classes = torch.randperm(20, generator=generator)[:ways].tolist()
            support, queries = [], []
            for class_index in classes:
                turns, digit = divmod(class_index, 5)
                pool = torch.rot90(images[targets == digits[digit]], turns, dims=(-2, -1))
                order = torch.randperm(len(pool), generator=generator)[: shots + query]
                support.append(pool[order[:shots]])
                queries.append(pool[order[shots:]])
            repeats += len({class_index % 5 for class_index in classes}) < ways
            task = source.sample(seed)
            expected_support, expected_query = torch.cat(support), torch.cat(queries)
            if flatten:
                expected_support, expected_query = expected_support.flatten(1), expected_query.flatten(1)
            assert torch.equal(task.support[0], expected_support), (seed, classes)
            assert torch.equal(task.query[0], expected_query), (seed, classes)
            assert task.support[1].tolist() == [label for label in range(ways) for _ in range(shots)]
            assert task.query[1].tolist() == [label for label in range(ways) for _ in range(query)]
    assert repeats > 0  # the pinned tasks include some with two rotations of one digit


def test_named_sources_share_one_interface():
    import inspect

    for source in (Omniglot, CIFARFS, FC100, MiniImageNet):
        parameters = inspect.signature(source).parameters
        assert list(parameters)[:4] == ["root", "num_ways", "num_shots", "num_query"], source
        assert {"split", "download", "image_size", "dtype"} <= set(parameters), source
    assert list(inspect.signature(Digits).parameters)[:4] == ["num_ways", "num_shots", "num_query", "split"]
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    # a message written over several source lines reads as one line, single-spaced, nothing at either end
    assert str(DatasetNotFoundError("\n  Omniglot not found under /data:\n\tput images_background/   there \n")) == (
        "Omniglot not found under /data: put images_background/ there"
    )
