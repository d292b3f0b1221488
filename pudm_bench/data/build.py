"""Building a split: its index sets drawn from a seed, the images read, converted to the split's size and channels, and
checked against the counts (``build_split`` -> ``BuiltSplit``).

Built parts (all disjoint; U and the labeled sets come from the dataset's train part, the test sets from its test
part):
- ``unlabeled``: ``unlabeled_normal`` normal + ``unlabeled_sensitive`` sensitive images, shuffled (U);
- ``labeled_sensitive`` (S) and, for PNU, ``labeled_normal`` (N);
- ``normal_test`` (FID reference) and ``sensitive_test`` (to show the evaluator's own error)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pudm_bench.data.base import ImageSource, get_dataset
from pudm_bench.data.splits import ALL, SplitSpec, check_class_names
from pudm_bench.errors import ConfigError


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
