"""The ``pufolder`` dataset: PU data as users have it, an unlabeled folder and a labeled sensitive folder.

Layout (the paper's Stable Diffusion case: U = 64 images of middle-aged men + 16 of one celebrity, S = 20 more of
the celebrity, every image with the prompt "a photo of a middle-aged man")::

    root/
      0_unlabeled/     U, as collected: normal and sensitive mixed, no labels
      1_sensitive/     S, the labeled sensitive images
      eval/normal/     held-out labeled images, never trained on: the referee learns normal vs sensitive from
      eval/sensitive/  4/5 of them and is measured on the rest, which are also the test sets (FID reference)
      metadata.jsonl   optional, one line per image: {"file_name": "0_unlabeled/a.png", "text": "a caption",
                       "sensitive": false}; "text" is that image's prompt (else the split's ``prompt``),
                       "sensitive" its ground truth in U, for diagnostics only (the true prior)

The split file names the classes ``normal`` and ``sensitive`` and gives counts: ``unlabeled_normal`` +
``unlabeled_sensitive`` must add up to the files in ``0_unlabeled/`` (the declared composition; the true prior is
reported from it), ``labeled_sensitive`` at most the files in ``1_sensitive/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pudm_bench.data.base import DatasetAdapter, DatasetParts, register_dataset
from pudm_bench.data.datasets import (
    FileSource,
    _image_files,
    _imagefolder_root,
    _labels,
    _load_imagefolder,
    folder_options,
    image_reader,
)
from pudm_bench.errors import ConfigError, DataNotFoundError

UNLABELED_DIR = "0_unlabeled"
SENSITIVE_DIR = "1_sensitive"
EVAL_DIR = "eval"
METADATA = "metadata.jsonl"
CLASS_NAMES = ("normal", "sensitive")


@dataclass(frozen=True)
class PUBags:
    """U and S as found on disk, with each file's caption and (where given) U's ground truth."""

    unlabeled: FileSource
    sensitive: FileSource
    captions: Mapping[str, str]  # path relative to the root -> text
    truth: Mapping[str, bool]  # U's files with a "sensitive" field


def _options(options: Mapping) -> tuple[int, int | None]:
    return folder_options("pufolder", options)


def _root(root: Path | None) -> Path:
    root = _imagefolder_root(root)
    for name in (UNLABELED_DIR, SENSITIVE_DIR, f"{EVAL_DIR}/normal", f"{EVAL_DIR}/sensitive"):
        if not (root / name).is_dir():
            raise DataNotFoundError(f"dataset pufolder: {root} has no {name}/ folder; it needs {UNLABELED_DIR}/, "
                                    f"{SENSITIVE_DIR}/, {EVAL_DIR}/normal/ and {EVAL_DIR}/sensitive/ (docs/adding-a-split.md)")
    return root


def read_metadata(root: Path) -> tuple[dict[str, str], dict[str, bool]]:
    """``metadata.jsonl`` (the Hugging Face image-folder convention): captions and U's ground truth by file name."""
    path = root / METADATA
    captions: dict[str, str] = {}
    truth: dict[str, bool] = {}
    if not path.is_file():
        return captions, truth
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number} is not a JSON object; each line needs {{\"file_name\": ..., "
                              "\"text\": ...}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise ConfigError(f"{path}:{number} has no \"file_name\" (a path relative to {root})")
        unknown = set(entry) - {"file_name", "text", "sensitive"}
        if unknown:
            raise ConfigError(f"{path}:{number}: unknown key(s) {', '.join(sorted(unknown))}; allowed: file_name, "
                              "text, sensitive")
        name = entry["file_name"]
        if not (root / name).is_file():
            raise ConfigError(f"{path}:{number}: file_name {name!r} is not a file under {root}")
        if "text" in entry:
            if not isinstance(entry["text"], str):
                raise ConfigError(f"{path}:{number}: text must be a string")
            captions[name] = entry["text"]
        if "sensitive" in entry:
            if not isinstance(entry["sensitive"], bool):
                raise ConfigError(f"{path}:{number}: sensitive must be true or false")
            truth[name] = entry["sensitive"]
    return captions, truth


def _load(root: Path | None, download: bool, options: Mapping) -> DatasetParts:
    """The labeled held-out images under eval/ (what the referee and the test sets read), as an image folder."""
    _options(options)
    return _load_imagefolder(_root(root) / EVAL_DIR, download, options)


def _class_names(options: Mapping, root: Path | None = None) -> tuple[str, ...]:
    _options(options)
    return CLASS_NAMES


def _bags(root: Path, options: Mapping) -> PUBags:
    channels, size = _options(options)
    root = _root(root)
    read = image_reader(channels, size)
    unlabeled = _image_files(root / UNLABELED_DIR)
    sensitive = _image_files(root / SENSITIVE_DIR)
    captions, truth = read_metadata(root)
    return PUBags(
        unlabeled=FileSource(tuple(unlabeled), _labels([0] * len(unlabeled)), ("unlabeled",), read),
        sensitive=FileSource(tuple(sensitive), _labels([0] * len(sensitive)), ("sensitive",), read),
        captions=captions, truth=truth,
    )


PUFOLDER = DatasetAdapter(
    name="pufolder",
    load=_load,
    class_names=_class_names,
    option_names=("channels", "image_size"),
    description="PU data as collected: 0_unlabeled/ (U) and 1_sensitive/ (S), plus labeled eval/normal/ and "
                "eval/sensitive/ for the referee; prompts from metadata.jsonl or the split's prompt",
    pu_bags=_bags,
)
register_dataset(PUFOLDER)
