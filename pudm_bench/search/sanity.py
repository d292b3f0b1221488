"""``python -m pudm_bench.sanity``: can a broken generator win the scores? Broken generators built from real images,
scored like a trained model.

A score a collapsed or garbage generator can win is a defect. This command builds image sets from the split's own
real images (no model involved) and scores each with ``evaluate.score_images``, exactly as a sweep trial is scored:

- ``real normal``: U's normal images (train part; the scores' references are the test part), the ceiling;
- ``noise``: uniform random pixels;
- ``blobs``: smooth random fields (noise at a quarter of the size, upsampled and squashed), what an under-trained
  diffusion model draws;
- ``blurred``: the real normal images under a heavy Gaussian blur (sigma = size / 8);
- ``one image``: a single real normal image, repeated (complete mode collapse);
- ``two classes dropped``: the real normal images without two of the normal classes (partial mode dropping).

Every broken set should either break a default constraint (``pareto.DEFAULT_CONSTRAINTS``: it is kept off the
Pareto front) or score below ``real normal`` on both axes of the front (non-sensitive rate up, quality down).
``check`` says which; the tests run it on the bundled digits, docs/metrics.md shows it on real MNIST.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from pudm_bench.data.build import BuiltSplit
from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import DEFAULT_CONSTRAINTS, METRIC_DIRECTIONS, RATE, parse_constraint

REAL = "real normal"
BROKEN = ("noise", "blobs", "blurred", "one image", "two classes dropped")


def broken_generators(split: BuiltSplit, num_images: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 image sets (num_images, C, H, W) at the split's geometry: ``REAL`` first, then each of ``BROKEN``."""
    from torchvision.transforms.functional import gaussian_blur

    if split.unlabeled_normal_labels is None or not split.truth_known:
        raise ConfigError(f"split {split.spec.name!r}: the broken generators need the classes of U's normal images "
                          "(a split whose U has ground truth)")
    generator = torch.Generator().manual_seed(seed)
    normal = split.unlabeled[~split.unlabeled_is_sensitive]
    labels = split.unlabeled_normal_labels

    def draw(images: torch.Tensor) -> torch.Tensor:  # num_images of them, without replacement where possible
        if len(images) >= num_images:
            return images[torch.randperm(len(images), generator=generator)[:num_images]]
        return images[torch.randint(len(images), (num_images,), generator=generator)]

    real = draw(normal)
    _, channels, size, _ = real.shape
    small = max(2, size // 4)
    field = torch.randn((num_images, 1, small, small), generator=generator)
    field = torch.nn.functional.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
    blobs = torch.sigmoid(3.0 * field - 1.5).mul(255).round().to(torch.uint8).expand(-1, channels, -1, -1)
    sigma = size / 8
    kernel = 2 * math.ceil(3 * sigma) + 1
    blurred = gaussian_blur(real.float(), [kernel, kernel], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)
    kept = labels >= 2 if len(split.spec.normal_classes) > 2 else labels >= 0
    return {
        REAL: real,
        "noise": torch.randint(0, 256, real.shape, generator=generator, dtype=torch.uint8),
        "blobs": blobs.contiguous(),
        "blurred": blurred,
        "one image": real[:1].expand_as(real).contiguous(),
        "two classes dropped": draw(normal[kept]),
    }


def dropped_classes(split: BuiltSplit) -> tuple[str, ...]:
    """The two normal classes the ``two classes dropped`` set leaves out (the first two of the split)."""
    return tuple(split.spec.normal_classes[:2]) if len(split.spec.normal_classes) > 2 else ()


def check(scores: dict[str, dict[str, Any]], quality: str,
          constraints: Sequence[str] = DEFAULT_CONSTRAINTS) -> dict[str, dict[str, Any]]:
    """For every broken set: the constraints it breaks, whether it scores below the real images on both axes of the
    front (rate no higher and quality no better: it cannot dominate them, nor tie), and ``caught`` = either."""
    parsed = [parse_constraint(text, METRIC_DIRECTIONS) for text in constraints]
    real = scores[REAL]
    out = {}
    for name, metrics in scores.items():
        if name == REAL:
            continue
        broken = [str(c) for c in parsed if not c.holds(metrics.get(c.metric, math.nan))]
        below = metrics[RATE] <= real[RATE] and metrics[quality] > real[quality]
        out[name] = {"violations": broken, "below_real_on_both": bool(below), "caught": bool(broken) or bool(below)}
    return out


def score_sets(split: BuiltSplit, sets: dict[str, torch.Tensor], referee, class_referee, config) -> dict[str, dict]:
    from pudm_bench.scoring.evaluate import score_images

    return {name: score_images(images, split, config, referee, class_referee=class_referee)
            for name, images in sets.items()}


COLUMNS = (RATE, "realistic_non_sensitive_rate", "realistic_share", "fd_per_class", "fd_classifier", "precision",
           "recall", "coverage_tv", "coverage_missing")


def markdown(scores: dict[str, dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> str:
    lines = ["| images | " + " | ".join(COLUMNS) + " | caught by |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, metrics in scores.items():
        cells = [f"{metrics.get(c, math.nan):.3g}" if isinstance(metrics.get(c), (int, float)) else "—"
                 for c in COLUMNS]
        verdict = verdicts.get(name)
        how = "—" if verdict is None else ", ".join(verdict["violations"]) or (
            "below real on both axes" if verdict["below_real_on_both"] else "**not caught**")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {how} |")
    return "\n".join(lines)
