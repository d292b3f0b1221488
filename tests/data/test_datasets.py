"""The dataset adapters read back exactly what tiny files in each real on-disk format hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from pudm_bench.data import DatasetAdapter, DatasetParts, dataset_names, get_dataset, register_dataset
from pudm_bench.errors import ConfigError, DataNotFoundError
from tests.dataset_files import write_celeba, write_cifar10, write_imagefolder, write_mnist, write_stl10

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10 = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
MALE, SMILING = 20, 31  # columns of list_attr_celeba.txt


def load(name: str, root: Path | None, **options) -> DatasetParts:
    return get_dataset(name).load(root, False, options)


def all_images(part) -> torch.Tensor:
    return part.images(torch.arange(len(part.labels)))


def assert_part(part, images: np.ndarray, labels, class_names: tuple[str, ...]) -> None:
    """Pixel-exact: shape, dtype, every value, labels (int64) and class names."""
    got = all_images(part)
    assert got.dtype == torch.uint8
    assert tuple(got.shape) == images.shape
    assert torch.equal(got, torch.from_numpy(images))
    assert part.labels.dtype == torch.int64
    assert part.labels.tolist() == list(labels)
    assert part.class_names == class_names


@pytest.fixture
def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every PIL.Image.open, to prove lazy sources read only the files asked for."""
    opened: list[str] = []
    real_open = PIL.Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    return opened


def test_all_seven_adapters_registered():
    assert dataset_names() == ["celeba", "cifar10", "digits", "imagefolder", "mnist", "pufolder", "stl10"]


# ------------------------------------------------------------------------------------------- bundled and torchvision


def test_digits_every_fifth_image_is_test():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected = np.round(bunch.images * 255 / 16).astype(np.uint8)[:, None]
    is_test = np.arange(len(expected)) % 5 == 4
    parts = get_dataset("digits").load(None, False, {})
    assert (len(parts.train.labels), len(parts.test.labels)) == (1438, 359)  # 1,797 = 5 * 359 + 2
    assert_part(parts.train, expected[~is_test], bunch.target[~is_test], DIGITS)
    assert_part(parts.test, expected[is_test], bunch.target[is_test], DIGITS)
    pixels = all_images(parts.train)
    assert pixels.min() == 0 and pixels.max() == 255
    assert get_dataset("digits").needs_root is False


def test_mnist_reads_idx_files(tmp_path):
    written = write_mnist(tmp_path, train_labels=[3, 1, 4, 1, 5], test_labels=[9, 2])
    parts = load("mnist", tmp_path)
    assert_part(parts.train, written.train_images, [3, 1, 4, 1, 5], DIGITS)
    assert_part(parts.test, written.test_images, [9, 2], DIGITS)


def test_cifar10_turns_hwc_into_chw(tmp_path, relaxed_md5):
    train_labels, test_labels = [0, 9, 3, 3, 7, 1, 2], [5, 8, 4]
    written = write_cifar10(tmp_path, train_labels, test_labels)
    parts = load("cifar10", tmp_path)
    assert_part(parts.train, written.train_images, train_labels, CIFAR10)
    assert_part(parts.test, written.test_images, test_labels, CIFAR10)


def test_stl10_undoes_column_major_storage(tmp_path, relaxed_md5):
    written = write_stl10(tmp_path, train_labels=[0, 7, 9], test_labels=[4, 1])
    parts = load("stl10", tmp_path)
    assert_part(parts.train, written.train_images, [0, 7, 9], STL10)
    assert_part(parts.test, written.test_images, [4, 1], STL10)


def test_fixed_class_names_need_no_files():
    for name, expected in (("digits", DIGITS), ("mnist", DIGITS), ("cifar10", CIFAR10), ("stl10", STL10)):
        assert get_dataset(name).class_names({}, None) == expected


# ------------------------------------------------------------------------------------------------------------ celeba


def test_celeba_labels_from_male_and_lazy_centre_crop(tmp_path, relaxed_md5, count_opens):
    written = write_celeba(tmp_path, n_train=3, n_test=2, n_valid=2)
    parts = load("celeba", tmp_path)
    assert count_opens == []  # loading parses text files only
    assert parts.train.class_names == parts.test.class_names == ("female", "male")
    assert parts.train.labels.dtype == torch.int64
    assert parts.train.labels.tolist() == written.train_attributes[:, MALE].tolist()
    assert parts.test.labels.tolist() == written.test_attributes[:, MALE].tolist()

    got = parts.train.images([2, 0])
    assert [Path(p).name for p in count_opens] == ["000003.jpg", "000001.jpg"]
    assert got.dtype == torch.uint8 and tuple(got.shape) == (2, 3, 178, 178)
    centre = written.train_images[[2, 0], :, 20:198, :].astype(float)  # 218 rows -> the middle 178
    assert np.abs(got.numpy() - centre).mean() < 3  # JPEG: close, not exact; a crop 20 rows off is ~18 away
    test_photo = parts.test.images([1]).numpy().astype(float)  # test rows come after the valid ones
    assert np.abs(test_photo - written.test_images[[1], :, 20:198, :]).mean() < 3


def test_celeba_other_attribute(tmp_path, relaxed_md5):
    written = write_celeba(tmp_path, n_train=4, n_test=2, n_valid=0, seed=1)
    parts = load("celeba", tmp_path, attribute="Smiling")
    assert parts.train.class_names == ("not_smiling", "smiling")
    assert parts.train.labels.tolist() == written.train_attributes[:, SMILING].tolist()
    assert parts.test.labels.tolist() == written.test_attributes[:, SMILING].tolist()
    assert get_dataset("celeba").class_names({"attribute": "Smiling"}, None) == ("not_smiling", "smiling")


def test_celeba_unknown_attribute_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'Smiling'"):
        get_dataset("celeba").class_names({"attribute": "Smilling"}, None)
    with pytest.raises(ConfigError, match="did you mean 'Male'"):
        get_dataset("celeba").load(None, False, {"attribute": "male"})


# ------------------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_partitions_every_fifth_file_per_class(tmp_path):
    written = write_imagefolder(tmp_path, {"dog": 3, "cat": 7}, size=(6, 4))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    cat = [f for f in written if f.class_name == "cat"]
    dog = [f for f in written if f.class_name == "dog"]
    train_files = cat[:4] + cat[5:] + dog
    parts = load("imagefolder", tmp_path)
    assert_part(parts.train, np.stack([f.pixels for f in train_files]), [0] * 6 + [1] * 3, ("cat", "dog"))
    assert_part(parts.test, cat[4].pixels[None], [0], ("cat", "dog"))


def test_imagefolder_train_test_layout(tmp_path):
    train = write_imagefolder(tmp_path / "train", {"a": 2, "b": 6}, seed=1)
    test = write_imagefolder(tmp_path / "test", {"a": 1, "b": 1}, seed=2)
    parts = load("imagefolder", tmp_path)
    assert_part(parts.train, np.stack([f.pixels for f in train]), [0, 0] + [1] * 6, ("a", "b"))
    assert_part(parts.test, np.stack([f.pixels for f in test]), [0, 1], ("a", "b"))


def test_imagefolder_class_names_read_no_pixels(tmp_path):
    for name in ("zebra", "ant"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "broken.png").write_bytes(b"not a png")
    assert get_dataset("imagefolder").class_names({}, tmp_path) == ("ant", "zebra")


def test_imagefolder_one_channel(tmp_path):
    written = write_imagefolder(tmp_path, {"x": 2, "y": 2}, channels=1, size=(5, 3))
    parts = load("imagefolder", tmp_path, channels=1)
    assert_part(parts.train, np.stack([f.pixels for f in written]), [0, 0, 1, 1], ("x", "y"))


def test_imagefolder_image_size_crops_centre_then_resizes(tmp_path):
    # 12x8 picture: green middle 8x8, red and blue 2-column margins that a centre crop must remove.
    pixels = np.zeros((8, 12, 3), dtype=np.uint8)
    pixels[:, :2] = (255, 0, 0)
    pixels[:, 2:10] = (0, 255, 0)
    pixels[:, 10:] = (0, 0, 255)
    (tmp_path / "only").mkdir()
    PIL.Image.fromarray(pixels).save(tmp_path / "only" / "wide.png")
    write_imagefolder(tmp_path, {"other": 1}, size=(3, 9))  # another size: fine once image_size is set
    parts = load("imagefolder", tmp_path, image_size=4)
    got = all_images(parts.train)
    assert tuple(got.shape) == (2, 3, 4, 4)
    expected_green = torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None].expand(3, 4, 4)
    assert torch.equal(got[0], expected_green)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    write_imagefolder(tmp_path, {"a": 2}, size=(6, 4))
    write_imagefolder(tmp_path, {"b": 1}, size=(5, 4))
    with pytest.raises(ConfigError) as error:
        load("imagefolder", tmp_path)
    message = str(error.value)
    assert "a/img_000.png is 6x4" in message and "b/img_000.png is 5x4" in message
    assert "dataset_options.image_size" in message and "\n" not in message


def test_imagefolder_empty_or_missing_folders(tmp_path):
    with pytest.raises(DataNotFoundError, match="no class sub-folders"):
        load("imagefolder", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="has no images"):
        load("imagefolder", tmp_path)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load("imagefolder", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        load("imagefolder", tmp_path, channels=4)


# ------------------------------------------------------------------------------------------------ errors and registry

TORCHVISION_FOLDERS = {
    "mnist": "MNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "stl10": "stl10_binary",
    "celeba": "celeba",
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_FOLDERS))
def test_missing_data_says_where_and_how_without_downloading(name, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_download(self):
        raise AssertionError("downloaded although download=False")

    for loader in (tvd.MNIST, tvd.CIFAR10, tvd.STL10, tvd.CelebA):
        monkeypatch.setattr(loader, "download", no_download)
    with pytest.raises(DataNotFoundError) as error:
        load(name, tmp_path)
    message = str(error.value)
    assert str(tmp_path / TORCHVISION_FOLDERS[name]) in message
    assert "--download" in message and "--data-dir" in message and "\n" not in message
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load(name, None)


def test_download_flag_reaches_torchvision(tmp_path, relaxed_md5, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def fake_download(self):
        calls.append(self.root)
        write_cifar10(self.root, [1, 2], [3])

    monkeypatch.setattr(tvd.CIFAR10, "download", fake_download)
    parts = get_dataset("cifar10").load(tmp_path, True, {})
    assert calls and parts.train.labels.tolist() == [1, 2] and parts.test.labels.tolist() == [3]


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(DataNotFoundError) as error:
        get_dataset("mnist").load(tmp_path, True, {})
    message = str(error.value)
    assert f"download into {tmp_path / 'MNIST/raw'} failed (Error downloading train-images" in message
    assert "\n" not in message


def test_unknown_dataset_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        get_dataset("cifar1O")


def test_unknown_option_key_refused():
    with pytest.raises(ConfigError, match="dataset_options key 'attribute'"):
        get_dataset("digits").load(None, False, {"attribute": "Male"})
    with pytest.raises(ConfigError, match="did you mean 'image_size'"):
        get_dataset("imagefolder").class_names({"imagesize": 8}, None)
    with pytest.raises(ConfigError, match="did you mean 'attribute'"):
        get_dataset("celeba").class_names({"atribute": "Male"}, None)


def test_duplicate_registration_refused():
    original = get_dataset("mnist")
    impostor = DatasetAdapter(name="mnist", load=original.load, class_names=lambda options, root: ("a", "b"))
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset(impostor)
    assert get_dataset("mnist") is original
