"""Sensitive splits: which classes of which dataset are normal and which sensitive, and how many of each go where.

A split is one YAML file (``benchmarks/splits/*.yaml`` ships the paper's; users add theirs with ``--splits-dir``
or ``PUDM_BENCH_SPLITS_PATH``). Loading validates everything that can be checked without reading pixels; building
draws the index sets from a seed and checks the counts against the data (``data.build``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pudm_bench.data.base import check_options, get_dataset
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

