"""Sensitive splits: which classes of which dataset are normal and which sensitive, and how many of each go where.

A split is one YAML file (``benchmarks/splits/*.yaml`` ships the paper's; users add theirs with ``--splits-dir``
or ``PUDM_BENCH_SPLITS_PATH``). Loading validates everything that can be checked without reading pixels; building
draws the index sets from a seed and checks the counts against the data.

Built parts (all disjoint; U and the labeled sets come from the dataset's train part, the test sets from its test
part):
- ``unlabeled``: ``unlabeled_normal`` normal + ``unlabeled_sensitive`` sensitive images, shuffled (U);
- ``labeled_sensitive`` (S) and, for PNU, ``labeled_normal`` (N);
- ``normal_test`` (FID reference) and ``sensitive_test`` (to show the evaluator's own error).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from pudm_bench.data.base import ImageSource, check_options, get_dataset
from pudm_bench.errors import ConfigError, check_keys, read_yaml, unknown_name
from pudm_bench.presets import MODEL_PRESETS

BUILTIN_SPLITS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "splits"
SPLITS_PATH_ENV = "PUDM_BENCH_SPLITS_PATH"
DATA_DIR_ENV = "PUDM_BENCH_DATA"

# Names become directory and experiment names: keep them to a safe alphabet (no path traversal).
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")

TOP_KEYS = (
    "name", "dataset", "description", "normal_classes", "sensitive_classes", "counts",
    "image_size", "channels", "model_preset", "dataset_options", "dataset_root", "quality_metric",
    "conditions", "prompt",
)
CONDITION_KEYS = ("classes", "prompt")
# The quality objective a split is scored on by default: Inception FID for the paper's datasets; the referee's
# feature space (cheap on a CPU) where Inception features mean little, e.g. 8x8 digits.
# fd_per_class: the Fréchet distance in the per-class referee's features (evaluate.score_images), the CPU splits'
# quality objective; fd_classifier (the binary referee's features) ranked blobs above digits on real MNIST.
QUALITY_METRICS = ("fid", "fd_per_class", "fd_classifier")
COUNT_KEYS = (
    "unlabeled_normal", "unlabeled_sensitive", "labeled_sensitive", "labeled_normal", "normal_test", "sensitive_test",
)
REQUIRED_COUNTS = ("unlabeled_normal", "unlabeled_sensitive", "labeled_sensitive", "normal_test")
ALL = "all"


@dataclass(frozen=True)
class SplitCounts:
    unlabeled_normal: int
    unlabeled_sensitive: int
    labeled_sensitive: int
    normal_test: int | str
    labeled_normal: int = 0
    sensitive_test: int | str = ALL

    @property
    def true_prior(self) -> float:
        """The share of sensitive images in U (what beta estimates)."""
        return self.unlabeled_sensitive / (self.unlabeled_normal + self.unlabeled_sensitive)


@dataclass(frozen=True)
class Condition:
    """One condition of a conditional split: the classes (normal and sensitive) it covers, and for text-to-image
    models its prompt. A conditional model learns p(x | condition) and the PU risk applies per condition."""

    name: str
    classes: tuple[str, ...]
    prompt: str | None = None


@dataclass(frozen=True)
class SplitSpec:
    name: str
    dataset: str
    normal_classes: tuple[str, ...]
    sensitive_classes: tuple[str, ...]
    counts: SplitCounts
    image_size: int
    channels: int
    model_preset: str
    description: str = ""
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    dataset_root: str | None = None
    quality_metric: str = "fid"
    source: str = "<memory>"
    # Set on a variant made by ``with_unlabeled_sensitive_share``: the registered split it derives from.
    variant_of: str | None = None
    unlabeled_sensitive_share: float | None = None
    # A conditional split: every class in exactly one condition (``conditions`` in the YAML). Empty: unconditional.
    conditions: tuple[Condition, ...] = ()
    # The text prompt of every image for text-to-image models (``--model sd``), where a condition has none.
    prompt: str | None = None

    @property
    def registry_name(self) -> str:
        """The name to look the split up by (a variant's base split)."""
        return self.variant_of or self.name

    def with_unlabeled_sensitive_share(self, share: float | None) -> "SplitSpec":
        """The same split with U's sensitive share set to ``share`` (a split option, e.g. 0.05, 0.1, 0.2).

        U keeps its ``unlabeled_normal`` images; ``unlabeled_sensitive`` becomes round(share * normal / (1 - share)),
        so the true prior is ``share`` up to rounding. The variant is named ``<name>-share<share>`` (a table column,
        an MLflow key); training configs refer to it as the base split plus ``unlabeled_sensitive_share``.
        """
        if share is None:
            return self
        if self.variant_of is not None:
            raise ConfigError(f"split {self.name!r} is already a variant of {self.variant_of!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"unlabeled_sensitive_share={share!r} is invalid: expected a share in (0, 1), e.g. 0.05")
        normal = self.counts.unlabeled_normal
        sensitive = round(share * normal / (1 - share))
        if sensitive < 1:
            raise ConfigError(f"unlabeled_sensitive_share={share} gives no sensitive image in U of split {self.name!r} "
                              f"({normal} normal images); use a larger share")
        return dataclasses.replace(self, name=f"{self.name}-share{share:g}", variant_of=self.name,
                                   unlabeled_sensitive_share=float(share),
                                   counts=dataclasses.replace(self.counts, unlabeled_sensitive=sensitive))

    def data_root(self, data_dir: str | Path | None) -> Path | None:
        """Where the adapter reads from: the split's own ``dataset_root`` (relative to its file) wins."""
        adapter = get_dataset(self.dataset)
        if self.dataset_root is not None:
            root = Path(self.dataset_root).expanduser()
            if not root.is_absolute() and self.source != "<memory>":
                root = Path(self.source).parent / root
            return root.resolve()
        if not adapter.needs_root:
            return None
        return resolve_data_dir(data_dir)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $PUDM_BENCH_DATA, else ./data; always absolute (Ray workers change directory)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().resolve()


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r} is invalid: expected an integer >= {minimum}")
    return value


def _int_or_all(where: str, key: str, value: Any) -> int | str:
    if value == ALL:
        return ALL
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key}={value!r} is invalid: expected an integer >= 1 or \"all\"")
    return value


def _class_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a non-empty list of class names (quote names like \"0\")")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: {key} lists a class twice: {value}")
    return tuple(value)


def parse_split(data: Any, source: str = "<memory>") -> SplitSpec:
    """Validate one split mapping (as read from YAML) and return its spec."""
    where = f"split file {source}"
    check_keys(data, TOP_KEYS, where, required=("name", "dataset", "normal_classes", "sensitive_classes", "counts",
                                                "image_size", "channels", "model_preset"))
    name = data["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: name={name!r} is invalid: use 1-64 lowercase letters, digits, '_' or '-'")
    where = f"split {name!r} ({source})"
    for key in ("dataset", "model_preset"):
        if not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key}={data[key]!r} is invalid: expected a name (a string)")
    options = data.get("dataset_options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: dataset_options must be a mapping")
    try:  # the adapter's own messages do not say which file they came from
        adapter = get_dataset(data["dataset"])
        check_options(adapter, options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    normal = _class_list(where, "normal_classes", data["normal_classes"])
    sensitive = _class_list(where, "sensitive_classes", data["sensitive_classes"])
    both = sorted(set(normal) & set(sensitive))
    if both:
        raise ConfigError(f"{where}: class(es) {', '.join(both)} are both normal and sensitive; list each class once")
    counts = data["counts"]
    check_keys(counts, COUNT_KEYS, f"{where} counts", required=REQUIRED_COUNTS)
    parsed_counts = SplitCounts(
        unlabeled_normal=_int(where, "counts.unlabeled_normal", counts["unlabeled_normal"], 1),
        unlabeled_sensitive=_int(where, "counts.unlabeled_sensitive", counts["unlabeled_sensitive"], 1),
        labeled_sensitive=_int(where, "counts.labeled_sensitive", counts["labeled_sensitive"], 1),
        labeled_normal=_int(where, "counts.labeled_normal", counts.get("labeled_normal", 0), 0),
        normal_test=_int_or_all(where, "counts.normal_test", counts["normal_test"]),
        sensitive_test=_int_or_all(where, "counts.sensitive_test", counts.get("sensitive_test", ALL)),
    )
    image_size = _int(where, "image_size", data["image_size"], 4)
    channels = data["channels"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels not in (1, 3):
        raise ConfigError(f"{where}: channels={channels!r} is invalid: expected 1 or 3")
    preset = data["model_preset"]
    if preset not in MODEL_PRESETS:
        raise unknown_name("model_preset", preset, MODEL_PRESETS, where)
    dataset_root = data.get("dataset_root")
    quality = data.get("quality_metric", "fid")
    if quality not in QUALITY_METRICS:
        raise unknown_name("quality_metric", quality, QUALITY_METRICS, where)
    if dataset_root is not None and (not isinstance(dataset_root, str) or not dataset_root):
        raise ConfigError(f"{where}: dataset_root={dataset_root!r} is invalid: expected a folder path (a string)")
    if adapter.name == "imagefolder" and dataset_root is None:
        raise ConfigError(f"{where}: dataset imagefolder needs dataset_root: the folder holding one sub-folder per class")
    prompt = data.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"{where}: prompt={prompt!r} is invalid: expected a text (a string)")
    spec = SplitSpec(
        name=name, dataset=adapter.name, normal_classes=normal, sensitive_classes=sensitive, counts=parsed_counts,
        image_size=image_size, channels=channels, model_preset=preset, description=str(data.get("description", "")),
        dataset_options=dict(options), dataset_root=dataset_root, quality_metric=quality, source=source,
        conditions=_conditions(where, data.get("conditions"), normal, sensitive), prompt=prompt,
    )
    # Class names can be checked now for every dataset whose names are fixed; an image folder's are known only
    # once the folder is there, so those are checked when the split is built.
    if adapter.name != "imagefolder":
        try:
            available = adapter.class_names(options, None)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        check_class_names(spec, available)
    return spec


def _conditions(where: str, value: Any, normal: tuple[str, ...], sensitive: tuple[str, ...]) -> tuple[Condition, ...]:
    """``conditions: {name: [classes...]}`` or ``{name: {classes: [...], prompt: "..."}}``: a partition of the
    split's classes in which every condition holds at least one normal class (its samples are scored)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) < 2:
        raise ConfigError(f"{where}: conditions must map at least two condition names to their classes, e.g. "
                          "{low: [zero, one], high: [eight, nine]}")
    out, seen = [], {}
    for name, entry in value.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}: condition name {name!r} is invalid: use 1-64 lowercase letters, digits, "
                              "'_' or '-'")
        if isinstance(entry, dict):
            check_keys(entry, CONDITION_KEYS, f"{where} conditions.{name}", required=("classes",))
            classes, prompt = entry["classes"], entry.get("prompt")
        else:
            classes, prompt = entry, None
        classes = _class_list(where, f"conditions.{name}", classes)
        if prompt is not None and not isinstance(prompt, str):
            raise ConfigError(f"{where}: conditions.{name}.prompt={prompt!r} is invalid: expected a text (a string)")
        for cls in classes:
            if cls not in normal and cls not in sensitive:
                raise unknown_name(f"class in conditions.{name}", cls, [*normal, *sensitive], where)
            if cls in seen:
                raise ConfigError(f"{where}: class {cls!r} is in conditions {seen[cls]!r} and {name!r}; put each "
                                  "class in one condition")
            seen[cls] = name
        if not set(classes) & set(normal):
            raise ConfigError(f"{where}: condition {name!r} has no normal class ({', '.join(classes)}); every "
                              "condition needs one, or its samples could only be sensitive")
        out.append(Condition(name, classes, prompt))
    missing = [c for c in (*normal, *sensitive) if c not in seen]
    if missing:
        raise ConfigError(f"{where}: class(es) {', '.join(missing)} are in no condition; add them to one of "
                          f"{', '.join(value)}")
    return tuple(out)


def check_class_names(spec: SplitSpec, available: Iterable[str]) -> None:
    available = list(available)
    for cls in (*spec.normal_classes, *spec.sensitive_classes):
        if cls not in available:
            raise unknown_name(f"class of dataset {spec.dataset}", cls, available, f"split {spec.name!r} ({spec.source})")


def load_split_file(path: str | Path) -> SplitSpec:
    data = read_yaml(path, "split file")
    return parse_split(data, str(path))


def split_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Built-in splits first, then $PUDM_BENCH_SPLITS_PATH entries, then --splits-dir folders."""
    dirs = [BUILTIN_SPLITS_DIR]
    env = os.environ.get(SPLITS_PATH_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    return dirs


def load_registry(extra_dirs: Iterable[str | Path] = ()) -> dict[str, SplitSpec]:
    """Every split file in the search path, by name; a name defined twice is an error naming both files."""
    registry: dict[str, SplitSpec] = {}
    for directory in split_dirs(extra_dirs):
        if not directory.is_dir():
            if directory != BUILTIN_SPLITS_DIR:
                raise ConfigError(f"splits directory {directory} does not exist; check --splits-dir and "
                                  f"${SPLITS_PATH_ENV}")
            continue
        for path in sorted(directory.glob("*.y*ml")):
            spec = load_split_file(path)
            if spec.name in registry:
                raise ConfigError(
                    f"split name {spec.name!r} is defined twice: {registry[spec.name].source} and {path}; rename one"
                )
            registry[spec.name] = spec
    return registry


def get_split(name: str, extra_dirs: Iterable[str | Path] = (), unlabeled_sensitive_share: float | None = None
              ) -> SplitSpec:
    """The registered split ``name``; with ``unlabeled_sensitive_share``, its variant with that share in U."""
    registry = load_registry(extra_dirs)
    if name not in registry:
        raise unknown_name("split", name, registry)
    return registry[name].with_unlabeled_sensitive_share(unlabeled_sensitive_share)


@dataclass(frozen=True)
class BuiltSplit:
    """The images of one split, as uint8 tensors (n, C, H, W) at the split's size and channels."""

    spec: SplitSpec
    seed: int
    unlabeled: torch.Tensor
    unlabeled_is_sensitive: torch.Tensor  # ground truth, for diagnostics only; training never reads it
    labeled_sensitive: torch.Tensor
    labeled_normal: torch.Tensor
    normal_test: torch.Tensor
    sensitive_test: torch.Tensor
    indices: Mapping[str, np.ndarray]
    fingerprint: str
    # Normal class (index into spec.normal_classes) of each normal image of U, in U's order, and of each normal test
    # image: ground truth for diagnostics only, like unlabeled_is_sensitive (training never reads them). U's is the
    # reference distribution of the normal-class coverage (diversity.py): what the model was shown. None where
    # unknown (splits built by hand).
    unlabeled_normal_labels: torch.Tensor | None = None
    normal_test_labels: torch.Tensor | None = None
    # Conditional splits: the condition (index into ``conditions``) of every image of each part, which training and
    # sampling read; ``prompts``: the text of each condition for text-to-image models. Unconditional: () and None.
    conditions: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    unlabeled_conditions: torch.Tensor | None = None
    labeled_sensitive_conditions: torch.Tensor | None = None
    labeled_normal_conditions: torch.Tensor | None = None
    normal_test_conditions: torch.Tensor | None = None
    # Text-to-image models: the prompt (index into ``prompts``) of each image of U, S and N where it differs from the
    # condition (per-image captions of a folder split); None: the condition's prompt (or the one prompt).
    unlabeled_prompt_ids: torch.Tensor | None = None
    labeled_sensitive_prompt_ids: torch.Tensor | None = None
    # False for folder splits whose U came without ground truth: unlabeled_is_sensitive is then all False and the
    # counts in summary() are the split file's.
    truth_known: bool = True

    @property
    def is_conditional(self) -> bool:
        return bool(self.conditions)

    def _unlabeled_shares(self, ids: torch.Tensor, count: int) -> torch.Tensor:
        """Each id's share of U's normal images (of all of U where the truth is unknown: then nothing is marked
        sensitive): what the model was shown, as for the coverage reference."""
        if not bool(self.unlabeled_is_sensitive.all()):
            ids = ids[~self.unlabeled_is_sensitive]
        counts = torch.bincount(ids, minlength=count).double()
        return counts / counts.sum()

    def prompt_shares(self) -> torch.Tensor | None:
        """Each prompt's share of U: the mix a text-to-image model is sampled in; None with fewer than two."""
        if len(self.prompts) < 2:
            return None
        ids = self.unlabeled_prompt_ids if self.unlabeled_prompt_ids is not None else self.unlabeled_conditions
        return self._unlabeled_shares(ids, len(self.prompts))

    def unlabeled_normal_condition_shares(self) -> torch.Tensor | None:
        """Each condition's share of U: the mix a conditional model is sampled in; None when unconditional."""
        if not self.is_conditional:
            return None
        return self._unlabeled_shares(self.unlabeled_conditions, len(self.conditions))

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.spec.name,
            "dataset": self.spec.dataset,
            "split_seed": self.seed,
            "fingerprint": self.fingerprint,
            "unlabeled_normal": int((~self.unlabeled_is_sensitive).sum()) if self.truth_known
            else self.spec.counts.unlabeled_normal,
            "unlabeled_sensitive": int(self.unlabeled_is_sensitive.sum()) if self.truth_known
            else self.spec.counts.unlabeled_sensitive,
            "labeled_sensitive": len(self.labeled_sensitive),
            "labeled_normal": len(self.labeled_normal),
            "normal_test": len(self.normal_test),
            "sensitive_test": len(self.sensitive_test),
            "true_prior": round(self.spec.counts.true_prior, 6),
            "image_shape": list(self.unlabeled.shape[1:]),
            **({"conditions": {name: int((self.unlabeled_conditions == i).sum()) for i, name in
                               enumerate(self.conditions)}} if self.is_conditional else {}),
        }


def convert_images(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Match the split's channel count and size: grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma,
    resize with antialiased bilinear interpolation; stays uint8."""
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if images.shape[-2:] != (size, size):
        resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _take(rng: np.random.Generator, pool: np.ndarray, counts: list[tuple[str, int]], where: str,
          pool_desc: str) -> dict[str, np.ndarray]:
    need = sum(n for _, n in counts)
    if need > len(pool):
        parts = " + ".join(f"{key}={n}" for key, n in counts)
        raise ConfigError(f"{where}: {parts} = {need} but {pool_desc} holds only {len(pool)} images; lower the counts")
    order = rng.permutation(pool)
    out, start = {}, 0
    for key, n in counts:
        out[key] = np.sort(order[start:start + n])
        start += n
    return out


def build_split(spec: SplitSpec, seed: int = 0, data_dir: str | Path | None = None,
                download: bool = False) -> BuiltSplit:
    """Draw U, S (and N), and the test sets, deterministically from ``seed``; read and convert their pixels.

    numpy's PCG64 generator is used because its stream is stable across versions and platforms, so a fingerprint
    names the same images everywhere.
    """
    adapter = get_dataset(spec.dataset)
    root = spec.data_root(data_dir)
    parts = adapter.load(root, download, spec.dataset_options)
    class_names = list(parts.train.class_names)
    check_class_names(spec, class_names)
    where = f"split {spec.name!r}"
    if adapter.pu_bags is not None:
        return _build_from_bags(spec, seed, adapter.pu_bags(root, spec.dataset_options), parts, where)
    normal_ids = [class_names.index(c) for c in spec.normal_classes]
    sensitive_ids = [class_names.index(c) for c in spec.sensitive_classes]
    rng = np.random.default_rng(seed)

    def pool(source: ImageSource, ids: list[int]) -> np.ndarray:
        return np.flatnonzero(np.isin(source.labels.numpy(), ids))

    counts = spec.counts
    train_normal = _take(rng, pool(parts.train, normal_ids),
                         [("unlabeled_normal", counts.unlabeled_normal), ("labeled_normal", counts.labeled_normal)],
                         where, f"the train part's normal classes ({', '.join(spec.normal_classes)})")
    train_sensitive = _take(rng, pool(parts.train, sensitive_ids),
                            [("unlabeled_sensitive", counts.unlabeled_sensitive),
                             ("labeled_sensitive", counts.labeled_sensitive)],
                            where, f"the train part's sensitive classes ({', '.join(spec.sensitive_classes)})")
    test_normal_pool = pool(parts.test, normal_ids)
    test_sensitive_pool = pool(parts.test, sensitive_ids)
    n_nt = len(test_normal_pool) if counts.normal_test == ALL else counts.normal_test
    n_st = len(test_sensitive_pool) if counts.sensitive_test == ALL else counts.sensitive_test
    test_normal = _take(rng, test_normal_pool, [("normal_test", n_nt)], where, "the test part's normal classes")
    test_sensitive = _take(rng, test_sensitive_pool, [("sensitive_test", n_st)], where,
                           "the test part's sensitive classes")
    indices = {**train_normal, **train_sensitive, **test_normal, **test_sensitive}

    # U is shuffled once (seeded) so that normal and sensitive images are interleaved.
    u_idx = np.concatenate([indices["unlabeled_normal"], indices["unlabeled_sensitive"]])
    u_truth = np.concatenate([np.zeros(len(indices["unlabeled_normal"]), bool),
                              np.ones(len(indices["unlabeled_sensitive"]), bool)])
    order = rng.permutation(len(u_idx))
    u_idx, u_truth = u_idx[order], u_truth[order]

    condition_of = _condition_lookup(spec, class_names)

    def conditions(source: ImageSource, idx: np.ndarray) -> torch.Tensor | None:
        return None if condition_of is None else condition_of[source.labels[torch.from_numpy(idx)].long()]

    read = functools.partial(_read_part, spec)

    return BuiltSplit(
        spec=spec,
        seed=seed,
        unlabeled=read(parts.train, u_idx),
        unlabeled_is_sensitive=torch.from_numpy(u_truth),
        labeled_sensitive=read(parts.train, indices["labeled_sensitive"]),
        labeled_normal=read(parts.train, indices["labeled_normal"]),
        normal_test=read(parts.test, indices["normal_test"]),
        sensitive_test=read(parts.test, indices["sensitive_test"]),
        indices={**indices, "unlabeled": u_idx},
        fingerprint=split_fingerprint(spec, indices | {"unlabeled": u_idx}),
        unlabeled_normal_labels=_normal_class_index(parts.train.labels[torch.from_numpy(u_idx[~u_truth])], normal_ids),
        normal_test_labels=_normal_class_index(parts.test.labels[torch.from_numpy(indices["normal_test"])],
                                               normal_ids),
        conditions=tuple(c.name for c in spec.conditions),
        prompts=tuple(c.prompt or spec.prompt or "" for c in spec.conditions) if spec.conditions else
        ((spec.prompt,) if spec.prompt else ()),
        unlabeled_conditions=conditions(parts.train, u_idx),
        labeled_sensitive_conditions=conditions(parts.train, indices["labeled_sensitive"]),
        labeled_normal_conditions=conditions(parts.train, indices["labeled_normal"]),
        normal_test_conditions=conditions(parts.test, indices["normal_test"]),
    )


def _read_part(spec: SplitSpec, source: ImageSource, idx: np.ndarray) -> torch.Tensor:
    """The images ``idx`` of ``source`` at the split's size and channels (an empty, correctly shaped tensor for none)."""
    if len(idx) == 0:
        return torch.zeros((0, spec.channels, spec.image_size, spec.image_size), dtype=torch.uint8)
    return convert_images(source.images(torch.from_numpy(idx)), spec.image_size, spec.channels)


def _build_from_bags(spec: SplitSpec, seed: int, bags: Any, parts: Any, where: str) -> BuiltSplit:
    """A split whose U and S are given as folders (``pufolder``): U is used whole, S drawn to its count, the test
    sets drawn from the labeled held-out images; each image's prompt from its caption or the split's prompt."""
    counts = spec.counts
    n_unlabeled = len(bags.unlabeled.paths)
    declared = counts.unlabeled_normal + counts.unlabeled_sensitive
    if declared != n_unlabeled:
        raise ConfigError(f"{where}: counts.unlabeled_normal + counts.unlabeled_sensitive = {declared} but U's folder "
                          f"holds {n_unlabeled} images; give U's composition as collected (it is only reported)")
    if counts.labeled_normal:
        raise ConfigError(f"{where}: counts.labeled_normal={counts.labeled_normal} but dataset pufolder has no "
                          "labeled normal images to train on; remove it")
    rng = np.random.default_rng(seed)
    sensitive = _take(rng, np.arange(len(bags.sensitive.paths)), [("labeled_sensitive", counts.labeled_sensitive)],
                      where, "the sensitive folder")["labeled_sensitive"]
    names = list(parts.test.class_names)

    def test_pool(cls: str) -> np.ndarray:
        return np.flatnonzero(parts.test.labels.numpy() == names.index(cls))

    normal_pool, sensitive_pool = test_pool("normal"), test_pool("sensitive")
    n_nt = len(normal_pool) if counts.normal_test == ALL else counts.normal_test
    n_st = len(sensitive_pool) if counts.sensitive_test == ALL else counts.sensitive_test
    normal_test = _take(rng, normal_pool, [("normal_test", n_nt)], where, "eval/normal's test images")["normal_test"]
    sensitive_test = _take(rng, sensitive_pool, [("sensitive_test", n_st)], where,
                           "eval/sensitive's test images")["sensitive_test"]

    root = Path(bags.unlabeled.paths[0]).parent.parent if n_unlabeled else Path(".")
    u_names = [str(Path(path).relative_to(root)) for path in bags.unlabeled.paths]
    s_names = [str(Path(bags.sensitive.paths[i]).relative_to(root)) for i in sensitive]
    truth_known = bool(u_names) and all(name in bags.truth for name in u_names)
    truth = torch.tensor([bags.truth.get(name, False) for name in u_names], dtype=torch.bool)
    if truth_known and int(truth.sum()) != counts.unlabeled_sensitive:
        raise ConfigError(f"{where}: metadata marks {int(truth.sum())} of U's images sensitive but "
                          f"counts.unlabeled_sensitive={counts.unlabeled_sensitive}; make them agree")
    texts_u = [bags.captions.get(name, spec.prompt or "") for name in u_names]
    texts_s = [bags.captions.get(name, spec.prompt or "") for name in s_names]
    prompts = tuple(dict.fromkeys(texts_u + texts_s)) if any(texts_u + texts_s) else ()
    ids = {text: i for i, text in enumerate(prompts)}
    indices = {"unlabeled": np.arange(n_unlabeled), "labeled_sensitive": sensitive,
               "labeled_normal": np.zeros(0, dtype=np.int64), "normal_test": normal_test,
               "sensitive_test": sensitive_test}

    read = functools.partial(_read_part, spec)

    return BuiltSplit(
        spec=spec, seed=seed,
        unlabeled=read(bags.unlabeled, indices["unlabeled"]), unlabeled_is_sensitive=truth,
        labeled_sensitive=read(bags.sensitive, sensitive), labeled_normal=read(bags.unlabeled, indices["labeled_normal"]),
        normal_test=read(parts.test, normal_test), sensitive_test=read(parts.test, sensitive_test),
        indices=indices, fingerprint=split_fingerprint(spec, {**indices, "files": np.array(  # which files, not only how many
            [int(hashlib.sha256("\n".join(u_names + s_names).encode()).hexdigest()[:12], 16)], dtype=np.int64)}),
        prompts=prompts,
        unlabeled_prompt_ids=torch.tensor([ids[t] for t in texts_u], dtype=torch.long) if prompts else None,
        labeled_sensitive_prompt_ids=torch.tensor([ids[t] for t in texts_s], dtype=torch.long) if prompts else None,
        truth_known=truth_known,
    )


def _condition_lookup(spec: SplitSpec, class_names: list[str]) -> torch.Tensor | None:
    """Dataset label -> condition index (-1 for classes outside the split), or None for unconditional splits."""
    if not spec.conditions:
        return None
    lookup = torch.full((len(class_names),), -1, dtype=torch.long)
    for index, condition in enumerate(spec.conditions):
        for cls in condition.classes:
            lookup[class_names.index(cls)] = index
    return lookup


def _normal_class_index(labels: torch.Tensor, normal_ids: list[int]) -> torch.Tensor:
    """Dataset labels of normal images -> their position in the split's normal class list."""
    lookup = torch.full((max(normal_ids, default=0) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(normal_ids, dtype=torch.long)] = torch.arange(len(normal_ids))
    return lookup[labels.long()]


def split_fingerprint(spec: SplitSpec, indices: Mapping[str, np.ndarray]) -> str:
    """sha256 (first 16 hex digits) of the dataset, its options, the image geometry and every chosen index."""
    payload = {
        "dataset": spec.dataset,
        "dataset_options": dict(sorted(spec.dataset_options.items())),
        "image_size": spec.image_size,
        "channels": spec.channels,
        "indices": {k: [int(i) for i in v] for k, v in sorted(indices.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def without_unlabeled(split: BuiltSplit, removed: Sequence[int]) -> BuiltSplit:
    """``split`` with the given U positions removed (the filter's training set)."""
    keep = torch.ones(len(split.unlabeled), dtype=torch.bool)
    keep[torch.as_tensor(list(removed), dtype=torch.long)] = False
    def kept(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values[keep]

    return dataclasses.replace(split, unlabeled=split.unlabeled[keep],
                               unlabeled_is_sensitive=split.unlabeled_is_sensitive[keep],
                               unlabeled_conditions=kept(split.unlabeled_conditions),
                               unlabeled_prompt_ids=kept(split.unlabeled_prompt_ids))
