"""The benchmark's referee: a normal-vs-sensitive classifier per split, trained once and cached on disk.

The referee is not part of any method. It is trained on the dataset's labeled train part (every image of the
split's normal and sensitive classes, not only the PU bags) and measured on the held-out test part; its balanced
accuracy is reported next to every score, and scoring is refused below a floor, because a weak referee makes the
non-sensitive rate meaningless.

A second, per-class referee (``RefereeSpec.per_class``: one output per class of the split, same architecture,
training and cache) names the normal class of each sample for the coverage metric and gives precision/recall their
feature space (``diversity.py``); its accuracy is reported beside the scores.

Architectures: a small CNN for images up to 32 px, a torchvision ResNet-18 (random init: nothing can be
downloaded) for larger ones, which it sees at 64 px: distinguishing the paper's classes (vehicles vs animals, male
vs female) does not need full resolution, and it keeps CelebA's training set in memory.

Cache: ``<cache_dir>/referees/<key>.safetensors`` + ``.json``, where the key hashes everything the referee depends
on (dataset, options, class lists, input geometry, architecture, training settings) — not the split's seed, since
the referee never sees the PU bags. A file lock makes concurrent Ray workers train it once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn

from pudm_bench.data.base import get_dataset
from pudm_bench.data.build import convert_images
from pudm_bench.data.splits import SplitSpec
from pudm_bench.errors import ConfigError, PudmError
from pudm_bench.training.nets import FLIP_DATASETS, ResNetReferee, SmallCNN

CACHE_ENV = "PUDM_BENCH_CACHE"
REFEREE_VERSION = 1


class RefereeTooWeakError(PudmError):
    """The referee's held-out balanced accuracy is below the floor: its verdicts would not mean much."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pudm_bench").expanduser().resolve()


@dataclass(frozen=True)
class RefereeSpec:
    """What a referee is: the task (classes, geometry) and how it is trained. Its hash is the cache key."""

    dataset: str
    dataset_options: dict[str, Any]
    class_groups: tuple[tuple[str, ...], ...]  # class names per output: (normal classes, sensitive classes)
    input_size: int
    channels: int
    arch: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    max_train_images: int = 50_000
    # At least this many optimizer steps, whatever ``epochs`` says: a user's image folder of a few hundred images
    # is one or two batches per epoch, and a handful of steps leaves the referee at chance. Set for the small CNN
    # only (300 steps cost seconds; digits: 11 batches x 30 epochs = 330 steps, unaffected); a ResNet-18 step at
    # 64 px costs about a second on a CPU, so larger images keep their epochs and rely on the floor check.
    min_steps: int = 0
    seed: int = 0
    version: int = REFEREE_VERSION

    @classmethod
    def binary(cls, split: SplitSpec, epochs: int | None = None) -> "RefereeSpec":
        small = split.image_size <= 32
        return cls(
            dataset=split.dataset,
            dataset_options=dict(sorted(split.dataset_options.items())),
            class_groups=(tuple(split.normal_classes), tuple(split.sensitive_classes)),
            input_size=split.image_size if small else 64,
            channels=split.channels,
            arch="small_cnn" if small else "resnet18",
            epochs=epochs if epochs is not None else (30 if split.dataset == "digits" else 10 if small else 15),
            min_steps=300 if small else 0,
        )

    @classmethod
    def per_class(cls, split: SplitSpec, epochs: int | None = None) -> "RefereeSpec":
        """One output per class of the split, normal classes first (same architecture and training as the
        binary referee): it names the normal class of a sample for the coverage metric, and its features, which
        separate every class rather than only normal from sensitive, are the space of precision and recall."""
        binary = cls.binary(split, epochs)
        classes = tuple(split.normal_classes) + tuple(split.sensitive_classes)
        return replace(binary, class_groups=tuple((name,) for name in classes))

    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=list)
        return f"{self.dataset}-{self.arch}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"

    def build(self) -> nn.Module:
        if self.arch == "small_cnn":
            return SmallCNN(self.channels, len(self.class_groups))
        if self.arch == "resnet18":
            return ResNetReferee(self.channels, len(self.class_groups))
        raise ConfigError(f"unknown referee architecture {self.arch!r}; allowed: small_cnn, resnet18")


class Referee:
    """A trained classifier plus what it is and how well it did on held-out data."""

    def __init__(self, spec: RefereeSpec, model: nn.Module, report: dict[str, Any]) -> None:
        self.spec = spec
        self.model = model.eval()
        self.report = report

    @property
    def balanced_accuracy(self) -> float:
        return float(self.report["balanced_accuracy"])

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = convert_images(images, self.spec.input_size, self.spec.channels)
        return images.float().div(255.0)

    @torch.no_grad()
    def logits_and_features(self, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) at any size -> (logits (N, K), penultimate features (N, D)), on the CPU."""
        device = next(self.model.parameters()).device
        logits, feats = [], []
        for start in range(0, len(images), batch_size):
            x = self._prepare(images[start:start + batch_size]).to(device)
            f = self.model.features(x)
            feats.append(f.cpu())
            logits.append(self.model.classify(f).cpu())
        if not logits:
            return torch.zeros(0, len(self.spec.class_groups)), torch.zeros(0, 1)
        return torch.cat(logits), torch.cat(feats)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted group per image (0 = normal, 1 = sensitive for the binary referee)."""
        return self.logits_and_features(images)[0].argmax(1)

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.logits_and_features(images)[1].double().numpy()


def _group_labels(labels: torch.Tensor, class_names: tuple[str, ...], groups) -> torch.Tensor:
    """Map dataset labels to group indices; -1 for classes in no group (left out)."""
    lookup = torch.full((len(class_names),), -1, dtype=torch.long)
    for g, names in enumerate(groups):
        for name in names:
            lookup[class_names.index(name)] = g
    return lookup[labels]


def _load_part(source, spec: RefereeSpec, cap: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    grouped = _group_labels(source.labels, tuple(source.class_names), spec.class_groups)
    idx = np.flatnonzero(grouped.numpy() >= 0)
    if len(idx) > cap:
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    chunks = [convert_images(source.images(torch.from_numpy(idx[i:i + 2048])), spec.input_size, spec.channels)
              for i in range(0, len(idx), 2048)]
    return torch.cat(chunks), grouped[torch.from_numpy(idx)]


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor, num_groups: int) -> tuple[float, list[float]]:
    """Mean over groups of the per-group recall, and the per-group recalls."""
    recalls = [float((pred[target == g] == g).float().mean()) for g in range(num_groups) if (target == g).any()]
    return float(np.mean(recalls)), recalls


def train_referee(spec: RefereeSpec, data_root: Path | None, download: bool = False,
                  device: str | torch.device = "cpu", log: Callable[[str], None] | None = None) -> Referee:
    """Train on the dataset's train part (class-balanced loss), measure on its test part; ``log`` gets a line at the
    start and about every 10 seconds (epoch, loss)."""
    start = time.perf_counter()
    adapter = get_dataset(spec.dataset)
    parts = adapter.load(data_root, download, spec.dataset_options)
    rng = np.random.default_rng(spec.seed)
    x_train, y_train = _load_part(parts.train, spec, spec.max_train_images, rng)
    x_test, y_test = _load_part(parts.test, spec, 20_000, rng)
    k = len(spec.class_groups)
    counts = torch.bincount(y_train, minlength=k).float()
    if (counts == 0).any():
        raise ConfigError(f"referee for {spec.dataset}: a class group has no training images; check the split's classes")
    torch.manual_seed(spec.seed)
    model = spec.build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(x_train) // spec.batch_size)
    epochs = max(spec.epochs, math.ceil(spec.min_steps / steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=epochs * steps_per_epoch)
    weight = (counts.sum() / (k * counts)).to(device)  # balanced: each group weighs the same in the loss
    flip = spec.dataset in FLIP_DATASETS
    generator = torch.Generator().manual_seed(spec.seed)
    if log is not None:
        epoch_word = "epoch" if epochs == 1 else "epochs"
        log(f"training {spec.arch} on {len(x_train):,} images for {epochs} {epoch_word} "
            f"({epochs * steps_per_epoch:,} steps)")
    last_line = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            x = x_train[idx].to(device).float().div(255.0)
            if flip:
                mask = torch.rand(len(idx), generator=generator) < 0.5
                x[mask.to(device)] = x[mask.to(device)].flip(-1)
            loss = F.cross_entropy(model(x), y_train[idx].to(device), weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if log is not None and (time.perf_counter() - last_line > 10 or epoch + 1 == epochs):
            last_line = time.perf_counter()
            log(f"epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}, {last_line - start:.0f} s")
    referee = Referee(spec, model.eval(), {})
    pred = referee.predict(x_test)
    bal, recalls = balanced_accuracy(pred, y_test, k)
    referee.report = {
        "balanced_accuracy": bal,
        "recall_per_group": recalls,
        "train_images": len(x_train),
        "train_steps": epochs * steps_per_epoch,
        "test_images": len(x_test),
        "train_seconds": round(time.perf_counter() - start, 2),
        "spec": asdict(spec),
    }
    return referee


def save_referee(referee: Referee, path_stem: Path) -> None:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = path_stem.with_name(path_stem.name + ".tmp")
    save_file({k: v.contiguous() for k, v in referee.model.state_dict().items()}, str(tmp) + ".safetensors")
    Path(str(tmp) + ".json").write_text(json.dumps(referee.report, indent=1, default=list))
    os.replace(str(tmp) + ".safetensors", str(path_stem) + ".safetensors")
    os.replace(str(tmp) + ".json", str(path_stem) + ".json")  # the JSON last: its presence marks completion


def load_referee_file(path: str | Path) -> Referee:
    """Load a referee saved by ``save_referee`` (``X.safetensors`` + ``X.json``); no unpickling."""
    stem = Path(path)
    if stem.suffix == ".safetensors":
        stem = stem.with_suffix("")
    meta_path, weights_path = Path(str(stem) + ".json"), Path(str(stem) + ".safetensors")
    if not meta_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"referee checkpoint {stem} needs {weights_path.name} and {meta_path.name}; "
                          "give the path of a referee saved by pudm_bench")
    report = json.loads(meta_path.read_text())
    spec_data = dict(report["spec"])
    spec_data["class_groups"] = tuple(tuple(g) for g in spec_data["class_groups"])
    spec = RefereeSpec(**spec_data)
    model = spec.build()
    model.load_state_dict(load_file(str(weights_path)))
    return Referee(spec, model, report)


def get_referee(split: SplitSpec, data_dir: str | Path | None = None, download: bool = False,
                cache_dir: str | Path | None = None, path: str | Path | None = None,
                epochs: int | None = None, log: Callable[[str], None] | None = None) -> Referee:
    """The split's binary referee: a user-supplied file, else the cached one, else trained now and cached."""
    if path is not None:
        referee = load_referee_file(path)
        expected = (tuple(split.normal_classes), tuple(split.sensitive_classes))
        if referee.spec.class_groups != expected:
            raise ConfigError(f"referee {path} separates {referee.spec.class_groups}, not split {split.name!r}'s "
                              f"{expected}; use a referee trained for this split")
        return referee
    return cached_referee(RefereeSpec.binary(split, epochs), split, data_dir, download, cache_dir, log)


def get_class_referee(split: SplitSpec, data_dir: str | Path | None = None, download: bool = False,
                      cache_dir: str | Path | None = None, epochs: int | None = None,
                      log: Callable[[str], None] | None = None) -> Referee | None:
    """The split's per-class referee (``RefereeSpec.per_class``), cached like the binary one; None when the split
    has a single normal class (CelebA male/female, a one-folder image split): there is no coverage to measure."""
    if len(split.normal_classes) < 2:
        return None
    return cached_referee(RefereeSpec.per_class(split, epochs), split, data_dir, download, cache_dir, log)


def cached_referee(spec: RefereeSpec, split: SplitSpec, data_dir: str | Path | None, download: bool,
                   cache_dir: str | Path | None, log: Callable[[str], None] | None = None) -> Referee:
    """The referee ``spec`` from the cache, else trained now (once, under a file lock) and cached. ``log`` gets one
    line saying which, with the held-out balanced accuracy, and the training's progress lines."""
    stem = Path(cache_dir or default_cache_dir()) / "referees" / spec.key()
    stem.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(stem) + ".lock"):
        if Path(str(stem) + ".json").is_file():
            referee = load_referee_file(stem)
            if log is not None:
                log(f"cached ({stem}.safetensors), held-out balanced accuracy {referee.balanced_accuracy:.3f}")
            return referee
        referee = train_referee(spec, split.data_root(data_dir), download, log=log)
        save_referee(referee, stem)
        if log is not None:
            log(f"trained in {referee.report['train_seconds']:.0f} s, held-out balanced accuracy "
                f"{referee.balanced_accuracy:.3f} (cached as {stem}.safetensors)")
        return referee


def check_referee(referee: Referee, floor: float) -> None:
    if referee.balanced_accuracy < floor:
        raise RefereeTooWeakError(
            f"the referee's held-out balanced accuracy is {referee.balanced_accuracy:.3f}, below the floor {floor}; "
            "its verdicts would be unreliable: train it longer (--referee-epochs), supply a better one (evaluate "
            "--referee), or lower --referee-floor knowingly"
        )
