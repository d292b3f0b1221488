"""Writers of tiny datasets in the exact on-disk formats torchvision 0.29.1 reads with ``download=False``.

Tests write a handful of images this way and read them back through the adapters, so the real torchvision reading
code runs (only its md5 checks are relaxed, see ``relaxed_md5`` in conftest). Every writer takes images in the
benchmark's own layout, uint8 (N, C, H, W), converts them to the file format the way the real files store them, and
returns what it wrote in that same (N, C, H, W) layout, so a test can compare exactly what comes back.
Pixels are random and non-symmetric: a read that swaps H and W or mixes up channel order cannot pass.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from pudm_bench.data.datasets import CELEBA_ATTRIBUTES, CIFAR10_CLASSES, STL10_CLASSES


@dataclass(frozen=True)
class Written:
    """What a writer put on disk: images (N, C, H, W) uint8 and integer labels (N,), per part."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _random_images(rng: np.random.Generator, n: int, channels: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, channels, height, width), dtype=np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0x08 = ubyte, then the number of dims), one big-endian int32 per dim."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train_labels: Sequence[int], test_labels: Sequence[int], seed: int = 0) -> Written:
    """root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, uncompressed (all four must exist)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    parts = {}
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        images = _random_images(rng, len(labels), 1, 28, 28)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(labels, dtype=np.uint8))
        parts[prefix] = (images, np.asarray(labels, dtype=np.int64))
    return Written(*parts["train"], *parts["t10k"])


def write_cifar10(root: Path, train_labels: Sequence[int], test_labels: Sequence[int], seed: int = 0) -> Written:
    """cifar-10-batches-py/: data_batch_1..5 + test_batch (pickled dicts, rows of 3072 = R, G, B planes) + batches.meta.

    torchvision opens all five training batches, so the training images are spread over them (a batch may be empty).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = _random_images(rng, len(train_labels), 3, 32, 32)
    test = _random_images(rng, len(test_labels), 3, 32, 32)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        batch = {
            "batch_label": name,
            "labels": [int(label) for label in labels],
            "data": images.reshape(len(images), 3 * 32 * 32),  # channel planes, each row-major: CHW flattened
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        (folder / name).write_bytes(pickle.dumps(batch))

    for number, chunk in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        dump(f"data_batch_{number}", train[chunk], train_labels[chunk])
    dump("test_batch", test, test_labels)
    meta = {"num_cases_per_batch": 10000, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return Written(train, train_labels, test, test_labels)


def write_stl10(root: Path, train_labels: Sequence[int], test_labels: Sequence[int], seed: int = 0,
                make_images=None) -> Written:
    """stl10_binary/: {train,test}_X.bin (uint8, each channel stored column-major), {train,test}_y.bin (1-based
    uint8 labels), class_names.txt, and an empty unlabeled_X.bin (torchvision checks it exists for every split).
    ``make_images(rng, labels) -> uint8 (N, 3, 96, 96)`` replaces the random pixels (e.g. class-dependent ones)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if make_images is None:
            images = _random_images(rng, len(labels), 3, 96, 96)
        else:
            images = np.ascontiguousarray(make_images(rng, np.asarray(labels)), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # (N, C, W, H): column-major
        (folder / f"{split}_y.bin").write_bytes((np.asarray(labels) + 1).astype(np.uint8).tobytes())
        parts[split] = (images, np.asarray(labels, dtype=np.int64))
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return Written(*parts["train"], *parts["test"])


@dataclass(frozen=True)
class WrittenCeleba:
    """CelebA as written: full 178x218 photos (N, 3, 218, 178) before JPEG, and 0/1 attributes (N, 40)."""

    train_images: np.ndarray
    train_attributes: np.ndarray
    test_images: np.ndarray
    test_attributes: np.ndarray


def _smooth_photo(rng: np.random.Generator, height: int = 218, width: int = 178) -> np.ndarray:
    """A (3, H, W) image that survives JPEG nearly unchanged yet differs row by row (a vertical ramp per channel),
    so a test can tell whether the centre crop starts at the right row."""
    ramp = np.linspace(0.0, 1.0, height)[:, None] * np.ones((1, width))
    low, high = rng.integers(0, 60, size=3), rng.integers(180, 256, size=3)
    return np.stack([lo + (hi - lo) * ramp for lo, hi in zip(low, high)]).round().astype(np.uint8)


def write_celeba(root: Path, n_train: int, n_test: int, n_valid: int = 2, seed: int = 0) -> WrittenCeleba:
    """celeba/: the five text files torchvision parses + img_align_celeba/NNNNNN.jpg (178x218, JPEG quality 95).

    Rows are ordered train, valid, test as in the real list_eval_partition.txt. torchvision crashes on a split with
    exactly one row (it squeezes the index tensor to a scalar), so each split needs 0 or at least 2 rows.
    """
    if 1 in (n_train, n_test, n_valid):
        raise ValueError("torchvision's CelebA cannot read a split with exactly one row; use 0 or >= 2")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "celeba"
    images_folder = folder / "img_align_celeba"
    images_folder.mkdir(parents=True, exist_ok=True)
    partition = [0] * n_train + [1] * n_valid + [2] * n_test
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    photos = np.stack([_smooth_photo(rng) for _ in names])
    attributes = rng.integers(0, 2, size=(len(names), len(CELEBA_ATTRIBUTES)))
    for name, photo in zip(names, photos):
        Image.fromarray(photo.transpose(1, 2, 0)).save(images_folder / name, quality=95)

    def table(file: str, header: str | None, rows: list[str]) -> None:
        # Files with a header start with the row count, then the column names, as the real ones do.
        head = [str(len(rows)), header] if header is not None else []
        (folder / file).write_text("\n".join(head + rows) + "\n")

    table("list_eval_partition.txt", None, [f"{n} {p}" for n, p in zip(names, partition)])
    table("identity_CelebA.txt", None, [f"{n} {i % 7 + 1}" for i, n in enumerate(names)])
    table("list_bbox_celeba.txt", "image_id x_1 y_1 width height", [f"{n}    95   71  226  313" for n in names])
    landmark_points = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
    landmark_columns = " ".join(f"{point}_{axis}" for point in landmark_points for axis in "xy")
    landmarks = [f"{n} 69  109  106  113   77  142   73  152  108  154" for n in names]
    table("list_landmarks_align_celeba.txt", landmark_columns, landmarks)
    # Attributes are -1/1, right-aligned in 3 columns ("-1  1"). The header ends in a space, so torchvision's csv
    # parse yields a 41st, empty name: an adapter must find its column by name, not by the header's length.
    attribute_rows = [n + "".join(f"{2 * a - 1:3d}" for a in row) for n, row in zip(names, attributes)]
    table("list_attr_celeba.txt", " ".join(CELEBA_ATTRIBUTES) + " ", attribute_rows)

    train, test = slice(0, n_train), slice(n_train + n_valid, None)
    return WrittenCeleba(photos[train], attributes[train], photos[test], attributes[test])


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    class_name: str
    pixels: np.ndarray  # (C, H, W) uint8 as saved (lossless for PNG)


def write_imagefolder(
    root: Path,
    counts_per_class: Mapping[str, int],
    size: tuple[int, int] = (6, 4),
    channels: int = 3,
    suffix: str = ".png",
    seed: int = 0,
) -> list[WrittenFile]:
    """root/<class>/img_NNN<suffix> with random pixels; ``size`` is (width, height). Returns files in sorted order."""
    rng = np.random.default_rng(seed)
    width, height = size
    written = []
    for class_name, count in counts_per_class.items():
        class_folder = Path(root) / class_name
        class_folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = _random_images(rng, 1, channels, height, width)[0]
            path = class_folder / f"img_{i:03d}{suffix}"
            Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)).save(path)
            written.append(WrittenFile(path, class_name, pixels))
    return sorted(written, key=lambda f: (f.class_name, f.path.name))
