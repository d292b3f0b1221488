"""Catching a model that "stops generating sensitive images" by dropping normal ones too.

The non-sensitive rate rewards a model that generates only some of the normal classes (measured on digits: PU with
beta 0.1 raised the rate from 0.94 to 0.99 while 4s, 6s and 8s nearly disappeared). Two measurements see that:

**Normal-class coverage.** A per-class referee (``referee.RefereeSpec.per_class``) labels each generated image that
the binary referee calls normal with one of the split's normal classes (argmax over the normal classes' logits).
With p the class distribution of the normal images in U (true labels, which no method reads: the distribution the
model was shown) and q the samples' distribution over normal classes:

    coverage_tv  = 1/2 * sum_c |q_c - p_c|                      (total variation, in [0, 1]; 0 = same distribution)
    coverage_kl  = sum_c p_c * log(p_c / q~_c),  q~_c = (n_c + 1/2) / (n + K/2)
    coverage_missing = #{c : q_c < p_c / 2}                      (normal classes with under half their share)

The KL is taken from the reference to the samples, so a dropped class costs the most; the add-1/2 (Jeffreys)
smoothing keeps it finite when a class got no sample at all. The reference is U, not the normal test set: their
class distributions can differ (scikit-learn's digits test part has 28% threes among the odd digits, U 19%), and
a model that learned U perfectly would then look like it dropped classes.

**Precision and recall** (Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved Precision and Recall Metric for
Assessing Generative Models", NeurIPS 2019). In a feature space, each set's manifold is the union of balls around
its points, each with the radius to that point's k-th nearest neighbour in its own set (k = 3 as in the paper):

    precision = share of generated features inside the real manifold   (fidelity: samples look like real data)
    recall    = share of real features inside the generated manifold   (diversity: real data is covered)

As in the paper both sets have the same size: the larger one is subsampled (seeded), because the radii shrink as a
set grows. A mode-dropping model keeps a high precision and loses recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

PR_NEIGHBOURS = 3  # k of Kynkäänniemi et al. (2019)
UNDER_SHARE = 0.5  # a normal class is "missing" below this fraction of its expected share
REALISM_REFERENCE = 10_000  # real images that draw the real-image manifold of on_manifold (seeded subsample above)


@dataclass(frozen=True)
class Coverage:
    """Generated images (those called normal) per normal class, against a reference class distribution (U's)."""

    class_names: tuple[str, ...]
    sample_counts: tuple[int, ...]
    expected_shares: tuple[float, ...]

    @property
    def num_samples(self) -> int:
        return int(sum(self.sample_counts))

    @property
    def sample_shares(self) -> tuple[float, ...]:
        n = self.num_samples
        return tuple(c / n if n else math.nan for c in self.sample_counts)

    @property
    def total_variation(self) -> float:
        if not self.num_samples:
            return math.nan
        return 0.5 * float(sum(abs(q - p) for q, p in zip(self.sample_shares, self.expected_shares)))

    @property
    def kl_divergence(self) -> float:
        """KL(p_test || q_samples) with add-1/2 smoothing of the sample counts (finite when a class is absent)."""
        n, k = self.num_samples, len(self.class_names)
        if not n:
            return math.nan
        smoothed = [(c + 0.5) / (n + 0.5 * k) for c in self.sample_counts]
        return float(sum(p * math.log(p / q) for p, q in zip(self.expected_shares, smoothed) if p > 0))

    @property
    def missing_classes(self) -> tuple[str, ...]:
        """Normal classes whose share among the samples is under half their share in the reference."""
        if not self.num_samples:
            return self.class_names
        return tuple(name for name, q, p in zip(self.class_names, self.sample_shares, self.expected_shares)
                     if q < UNDER_SHARE * p)

    def metrics(self) -> dict[str, Any]:
        """Flat metrics for results and MLflow (numbers), plus the names of the missing classes (a string)."""
        return {"coverage_tv": self.total_variation, "coverage_kl": self.kl_divergence,
                "coverage_missing": len(self.missing_classes), "coverage_samples": self.num_samples,
                "coverage_missing_classes": ", ".join(self.missing_classes)}

    def rows(self) -> list[dict[str, Any]]:
        """One row per normal class: the per-class histogram (logged as an MLflow table)."""
        missing = set(self.missing_classes)
        return [{"class": name, "expected_share": p, "sample_share": q, "sample_count": c, "missing": name in missing}
                for name, c, p, q in zip(self.class_names, self.sample_counts, self.expected_shares,
                                         self.sample_shares)]


def class_coverage(sample_classes: torch.Tensor | np.ndarray | Sequence[int],
                   reference_classes: torch.Tensor | np.ndarray | Sequence[int],
                   class_names: Sequence[str]) -> Coverage:
    """Coverage of ``class_names`` by generated images: ``sample_classes`` and ``reference_classes`` hold class
    indices into ``class_names`` (the samples' predicted classes; the reference images' true ones)."""
    k = len(class_names)
    samples = np.asarray(sample_classes, dtype=np.int64).reshape(-1)
    reference = np.asarray(reference_classes, dtype=np.int64).reshape(-1)
    for what, values in (("sample", samples), ("reference", reference)):
        if values.size and (values.min() < 0 or values.max() >= k):
            raise ValueError(f"{what} class indices must be in [0, {k}); got {values.min()}..{values.max()}")
    if not reference.size:
        raise ValueError("coverage needs at least one reference image")
    expected = np.bincount(reference, minlength=k) / reference.size
    return Coverage(tuple(class_names), tuple(int(c) for c in np.bincount(samples, minlength=k)),
                    tuple(float(p) for p in expected))


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for start in range(0, len(features), chunk):
        d = torch.cdist(features[start:start + chunk], features)
        # The k+1-th smallest distance: the smallest is the point itself (0).
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each point, whether it lies in at least one ball (centre, radius)."""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k: int = PR_NEIGHBOURS, seed: int = 0,
                     chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake_features`` against ``real_features``.

    Both are (N, D) arrays; the larger set is subsampled (seeded) to the size of the smaller one. Distances are
    Euclidean, in float64.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall need two (N, D) feature arrays of one D, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    n = min(len(real), len(fake))
    if n <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} images per set, got {n}")
    generator = torch.Generator().manual_seed(seed)
    if len(real) > n:
        real = real[torch.randperm(len(real), generator=generator)[:n]]
    if len(fake) > n:
        fake = fake[torch.randperm(len(fake), generator=generator)[:n]]
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = float(_inside(fake, real, real_radii, chunk).double().mean())
    recall = float(_inside(real, fake, fake_radii, chunk).double().mean())
    return precision, recall


def on_manifold(reference_features, query_features, k: int = PR_NEIGHBOURS, max_reference: int = REALISM_REFERENCE,
                seed: int = 0, chunk: int = 1024) -> torch.Tensor:
    """For each query feature, whether it lies inside the k-NN manifold of ``reference_features`` (the union of
    balls around the reference points, each with the radius to its k-th nearest reference neighbour: the real
    manifold of Kynkäänniemi et al., 2019). Boolean tensor, one entry per query.

    Unlike precision, the reference is not subsampled to the query's size but capped at ``max_reference`` (seeded
    subsample): a larger real set draws the manifold tighter and more faithfully, and the answer for one sample
    must not depend on how many others were drawn with it.
    """
    real = torch.as_tensor(np.asarray(reference_features), dtype=torch.float64)
    query = torch.as_tensor(np.asarray(query_features), dtype=torch.float64)
    if real.ndim != 2 or query.ndim != 2 or real.shape[1] != query.shape[1]:
        raise ValueError(f"on_manifold needs two (N, D) feature arrays of one D, got {tuple(real.shape)} and "
                         f"{tuple(query.shape)}")
    if len(real) <= k:
        raise ValueError(f"on_manifold with k={k} needs more than {k} reference images, got {len(real)}")
    if len(real) > max_reference:
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:max_reference]]
    return _inside(query, real, _kth_neighbour_radii(real, k, chunk), chunk)


def coverage_plot(rows: Sequence[dict[str, Any]], title: str):
    """A matplotlib Figure (Agg, no pyplot state): per normal class, its share in the reference (U's normal images)
    and among the samples called normal; classes under half their share are marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 2.0), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    expected = [r["expected_share"] for r in rows]
    observed = [0.0 if not math.isfinite(r["sample_share"]) else r["sample_share"] for r in rows]
    ax.bar(x - 0.2, expected, width=0.4, color="0.7", label="normal images in U")
    colours = ["tab:red" if r["missing"] else "tab:blue" for r in rows]
    ax.bar(x + 0.2, observed, width=0.4, color=colours, label="samples called normal")
    missing = [i for i, r in enumerate(rows) if r["missing"]]
    # A class with no sample at all has no bar to colour: a cross at zero marks it.
    ax.plot(x[missing] + 0.2, [observed[i] for i in missing], linestyle="none", marker="x", markersize=9,
            color="tab:red", label=f"under {UNDER_SHARE:g} x its share")
    ax.set_xticks(x, [str(r["class"]) for r in rows], rotation=30 if len(rows) > 6 else 0)
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig
