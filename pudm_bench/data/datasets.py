"""The six built-in dataset adapters: digits, mnist, cifar10, stl10, celeba, imagefolder (pufolder: pufolder.py).

Each adapter turns one on-disk (or bundled) dataset into train/test ``ImageSource`` parts of uint8 (N, C, H, W)
images. The torchvision datasets are read through torchvision's own loaders, so the on-disk formats are exactly
the ones torchvision downloads; we only reorder axes (CIFAR10 is stored HWC) and turn torchvision's
"Dataset not found" RuntimeError into a one-line ``DataNotFoundError`` that says where we looked and how to fix it.
CelebA and image folders are lazy: ``images(indices)`` opens only the files asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from pudm_bench.data.base import (
    DatasetAdapter,
    DatasetParts,
    ImageSource,
    TensorSource,
    check_options,
    get_dataset,
    register_dataset,
)
from pudm_bench.errors import ConfigError, DataCorruptError, DataNotFoundError, PudmError, unknown_name

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
# The 40 columns of CelebA's list_attr_celeba.txt, in file order ("Male" is column 20). Kept here so a split's
# attribute can be checked without the dataset on disk; loading reads the column index from the file's own header.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Deterministic train/test partition for data that ships without one: every fifth item is test.
TEST_EVERY = 5


def _is_test_position(position: int) -> bool:
    return position % TEST_EVERY == TEST_EVERY - 1


def _labels(values: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


def _center_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square, so non-square photos keep their middle instead of being squashed."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _to_chw(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@dataclass(frozen=True)
class FileSource:
    """An ImageSource backed by image files, read only when ``images`` asks for them (CelebA has 200k photos)."""

    paths: tuple[Path, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    read: Callable[[Path], np.ndarray]  # one file -> uint8 (C, H, W), all files the same shape

    def images(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        chosen = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        if not chosen:
            # An empty request still has to say the image shape, which only a file can tell.
            return torch.empty((0, *self.read(self.paths[0]).shape), dtype=torch.uint8)
        return torch.from_numpy(np.stack([self.read(self.paths[i]) for i in chosen]))


# ---------------------------------------------------------------------------------------------- torchvision data


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# Reads one part ("train" or "test") of a torchvision dataset: (root, split, download, options) -> ImageSource.
PartReader = Callable[[Path, str, bool, Mapping], ImageSource]


def _torchvision_loader(name: str, folder: str, files: tuple[str, ...],
                        read_part: PartReader) -> Callable[..., DatasetParts]:
    """An adapter's ``load`` around a torchvision class: its multi-line errors become one line naming
    ``<root>/<folder>``, the place torchvision looks: ``DataNotFoundError`` when some of ``files`` are missing there,
    ``DataCorruptError`` when all are present but torchvision cannot read them (truncated or overwritten files fail
    its md5 check or its parser)."""

    def load(root: Path | None, download: bool, options: Mapping) -> DatasetParts:
        adapter = get_dataset(name)
        check_options(adapter, options)
        adapter.class_names(options, root)  # checks option values before any file is touched
        if root is None:
            raise DataNotFoundError(
                f"dataset {name} needs a data directory; pass --data-dir DIR pointing at a folder that contains "
                f"{folder} (add --download to fetch it there)"
            )
        looked_in = Path(root) / folder
        try:
            train = read_part(Path(root), "train", download, options)
            test = read_part(Path(root), "test", download, options)
        except Exception as error:  # torchvision raises RuntimeError, OSError, AssertionError, ValueError, ...
            if isinstance(error, PudmError):
                raise
            if download:
                raise DataNotFoundError(
                    f"dataset {name}: download into {looked_in} failed ({_first_line(error)}); check the network, "
                    f"or put the files there yourself and run without --download"
                ) from error
            missing = [f for f in files if not (looked_in / f).exists()]
            if not missing:
                raise DataCorruptError(
                    f"dataset {name}: the files in {looked_in} are present but unreadable ({_first_line(error)}); "
                    "they are truncated or not the dataset's: delete them and fetch them again (--download)"
                ) from error
            raise DataNotFoundError(
                f"dataset {name}: no complete copy found in {looked_in} (missing: {', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); pass --download to fetch it, or --data-dir DIR pointing at "
                f"a folder that contains {folder}"
            ) from error
        return DatasetParts(train=train, test=test)

    return load


def _read_mnist(root: Path, split: str, download: bool, options: Mapping) -> ImageSource:
    from torchvision.datasets import MNIST  # lazy: torchvision costs seconds to import and only loading needs it

    ds = MNIST(root, train=split == "train", download=download)
    return TensorSource(ds.data.unsqueeze(1).contiguous(), _labels(ds.targets), DIGIT_NAMES)


def _read_cifar10(root: Path, split: str, download: bool, options: Mapping) -> ImageSource:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root, train=split == "train", download=download)
    chw = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # torchvision keeps CIFAR as HWC
    return TensorSource(torch.from_numpy(chw), _labels(ds.targets), CIFAR10_CLASSES)


def _read_stl10(root: Path, split: str, download: bool, options: Mapping) -> ImageSource:
    from torchvision.datasets import STL10

    ds = STL10(root, split=split, download=download)
    # torchvision has already undone the column-major storage; .data is a transposed (strided) view, hence the copy.
    chw = np.ascontiguousarray(ds.data)
    return TensorSource(torch.from_numpy(chw), _labels(ds.labels.astype(np.int64)), STL10_CLASSES)


# --------------------------------------------------------------------------------------------------------- celeba


def _celeba_attribute(options: Mapping) -> str:
    attribute = options.get("attribute", "Male")
    if attribute not in CELEBA_ATTRIBUTES:
        where = "dataset celeba: dataset_options.attribute"
        raise unknown_name("CelebA attribute", attribute, CELEBA_ATTRIBUTES, where)
    return attribute


def _celeba_class_names(options: Mapping, root: Path | None = None) -> tuple[str, ...]:
    check_options(get_dataset("celeba"), options)
    attribute = _celeba_attribute(options)
    if attribute == "Male":
        return ("female", "male")
    return (f"not_{attribute.lower()}", attribute.lower())


def _read_celeba_file(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return _to_chw(_center_square(image.convert("RGB")))


def _read_celeba(root: Path, split: str, download: bool, options: Mapping) -> ImageSource:
    from torchvision.datasets import CelebA

    # torchvision's CelebA parses only the text files here; the photos stay on disk until images() asks.
    ds = CelebA(root, split=split, target_type="attr", download=download)
    column = ds.attr_names.index(_celeba_attribute(options))
    folder = Path(ds.root) / ds.base_folder / "img_align_celeba"
    paths = tuple(folder / name for name in ds.filename)
    labels = ds.attr[:, column].to(torch.int64)
    return FileSource(paths, labels, _celeba_class_names(options), _read_celeba_file)


# ---------------------------------------------------------------------------------------------------- imagefolder


def folder_options(dataset: str, options: Mapping) -> tuple[int, int | None]:
    """The ``channels`` (default 3) and ``image_size`` (default: keep) options of a folder dataset, checked."""
    check_options(get_dataset(dataset), options)
    channels = options.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"dataset {dataset}: dataset_options.channels must be 1 or 3, got {channels!r}")
    size = options.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"dataset {dataset}: dataset_options.image_size must be a positive integer, got {size!r}")
    return channels, size


def _imagefolder_options(options: Mapping) -> tuple[int, int | None]:
    return folder_options("imagefolder", options)


def _imagefolder_root(root: Path | None) -> Path:
    if root is None:
        raise DataNotFoundError("dataset imagefolder needs a folder; pass --data-dir DIR with one sub-folder per class")
    if not Path(root).is_dir():
        raise DataNotFoundError(
            f"dataset imagefolder: folder {root} does not exist; pass --data-dir DIR with one sub-folder per class"
        )
    return Path(root)


def _has_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _class_folders(folder: Path) -> list[Path]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataNotFoundError(
            f"dataset imagefolder: no class sub-folders in {folder}; put each class's images in {folder}/<class name>/"
        )
    return classes


def _image_files(class_folder: Path) -> list[Path]:
    files = sorted(p for p in class_folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataNotFoundError(
            f"dataset imagefolder: class folder {class_folder} has no images ({', '.join(IMAGE_SUFFIXES)}); "
            f"add some or remove the folder"
        )
    return files


def _imagefolder_class_names(options: Mapping, root: Path | None) -> tuple[str, ...]:
    _imagefolder_options(options)
    root = _imagefolder_root(root)
    folder = root / "train" if _has_split_layout(root) else root
    return tuple(p.name for p in _class_folders(folder))


def _listed_part(folder: Path, class_names: tuple[str, ...]) -> list[tuple[Path, int]]:
    found = tuple(p.name for p in _class_folders(folder))
    if found != class_names:
        raise ConfigError(
            f"dataset imagefolder: {folder} has class folders {', '.join(found)} but train/ has "
            f"{', '.join(class_names)}; give train/ and test/ the same class folders"
        )
    return [(path, label) for label, name in enumerate(class_names) for path in _image_files(folder / name)]


def _check_one_size(paths: Sequence[Path]) -> None:
    """Images go into one tensor, so without a target size they must already agree; headers suffice to tell."""
    first_size = None
    for path in paths:
        try:
            with Image.open(path) as image:
                size = image.size
        except OSError as error:
            raise DataCorruptError(f"image {path} cannot be read ({_first_line(error)}); replace or remove it") from None
        if first_size is None:
            first_size = (paths[0], size)
        elif size != first_size[1]:
            (w0, h0), (w1, h1) = first_size[1], size
            raise ConfigError(
                f"dataset imagefolder: {first_size[0]} is {w0}x{h0} but {path} is {w1}x{h1}; set "
                f"dataset_options.image_size to crop and resize every image to one square size"
            )


def image_reader(channels: int, size: int | None) -> Callable[[Path], np.ndarray]:
    """One image file -> uint8 (C, H, W): grey or RGB, centre-cropped and resized to ``size`` when given."""
    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    image = _center_square(image).resize((size, size), Image.Resampling.BICUBIC)
                return _to_chw(image)
        except OSError as error:  # PIL's UnidentifiedImageError, a truncated file
            raise DataCorruptError(f"image {path} cannot be read ({_first_line(error)}); replace or remove it") from None

    return read


def _load_imagefolder(root: Path | None, download: bool, options: Mapping) -> DatasetParts:
    channels, size = _imagefolder_options(options)
    root = _imagefolder_root(root)
    class_names = _imagefolder_class_names(options, root)
    if _has_split_layout(root):
        train = _listed_part(root / "train", class_names)
        test = _listed_part(root / "test", class_names)
    else:
        train, test = [], []
        for label, name in enumerate(class_names):
            for position, path in enumerate(_image_files(root / name)):
                (test if _is_test_position(position) else train).append((path, label))
    if size is None:
        _check_one_size([path for path, _ in train + test])
    read = image_reader(channels, size)

    def part(items: list[tuple[Path, int]]) -> FileSource:
        return FileSource(tuple(p for p, _ in items), _labels([label for _, label in items]), class_names, read)

    return DatasetParts(train=part(train), test=part(test))


# --------------------------------------------------------------------------------------------------------- digits


def _load_digits(root: Path | None, download: bool, options: Mapping) -> DatasetParts:
    check_options(get_dataset("digits"), options)
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import and only digits needs it

    bunch = load_digits()
    pixels = torch.from_numpy(np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
    labels = _labels(bunch.target)
    is_test = torch.tensor([_is_test_position(i) for i in range(len(labels))])
    return DatasetParts(
        train=TensorSource(pixels[~is_test].contiguous(), labels[~is_test], DIGIT_NAMES),
        test=TensorSource(pixels[is_test].contiguous(), labels[is_test], DIGIT_NAMES),
    )


def _fixed_names(adapter_name: str, names: tuple[str, ...]) -> Callable[[Mapping, Path | None], tuple[str, ...]]:
    def class_names(options: Mapping, root: Path | None = None) -> tuple[str, ...]:
        check_options(get_dataset(adapter_name), options)  # looked up at call time: the adapter is made below
        return names

    return class_names


DIGITS = DatasetAdapter(
    name="digits",
    load=_load_digits,
    class_names=_fixed_names("digits", DIGIT_NAMES),
    needs_root=False,
    description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, grey); every 5th image is test",
)
MNIST = DatasetAdapter(
    name="mnist",
    load=_torchvision_loader("mnist", "MNIST/raw", tuple(f"{part}-{kind}-ubyte" for part in ("train", "t10k")
                                                         for kind in ("images-idx3", "labels-idx1")), _read_mnist),
    class_names=_fixed_names("mnist", DIGIT_NAMES),
    description="MNIST 28x28 grey digits via torchvision (MNIST/raw)",
)
CIFAR10 = DatasetAdapter(
    name="cifar10",
    load=_torchvision_loader("cifar10", "cifar-10-batches-py",
                             tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
                             _read_cifar10),
    class_names=_fixed_names("cifar10", CIFAR10_CLASSES),
    description="CIFAR-10 32x32 colour images via torchvision (cifar-10-batches-py)",
)
STL10 = DatasetAdapter(
    name="stl10",
    load=_torchvision_loader("stl10", "stl10_binary", ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
                             _read_stl10),
    class_names=_fixed_names("stl10", STL10_CLASSES),
    description="STL-10 96x96 colour images, labelled train/test via torchvision (stl10_binary)",
)
CELEBA = DatasetAdapter(
    name="celeba",
    load=_torchvision_loader("celeba", "celeba", ("list_attr_celeba.txt", "list_eval_partition.txt",
                                                  "img_align_celeba"), _read_celeba),
    class_names=_celeba_class_names,
    option_names=("attribute",),
    description="CelebA aligned faces via torchvision, centre-cropped to 178x178; labels from one attribute (Male)",
)
IMAGEFOLDER = DatasetAdapter(
    name="imagefolder",
    load=_load_imagefolder,
    class_names=_imagefolder_class_names,
    option_names=("channels", "image_size"),
    description="a folder with one sub-folder per class (or train/ and test/ holding them); every 5th file is test",
)
for _adapter in (DIGITS, MNIST, CIFAR10, STL10, CELEBA, IMAGEFOLDER):
    register_dataset(_adapter)
