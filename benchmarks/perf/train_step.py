"""Training-step cost, side by side in one run (docs/performance.md, items 1-3):

1. the suite's PU-DM step (``pudm_bench.train.train``: batch from the in-memory tensor, noising, forward,
   per-example loss, backward, clip, AdamW, LR schedule, metric bookkeeping) against a bare ``UNet2DModel``
   forward + backward + AdamW step on the same model shape and batch size;
2. PU (abs, max) against unsupervised, same batch;
3. the data pipeline (index the uint8 tensor, convert to [-1, 1]) as a share of the step.

Per-step times come from the training loop's own clock (``elapsed_s`` in its log callbacks), after a warm-up
interval, so model construction and the final checkpoint are not counted.

    python benchmarks/perf/train_step.py [--steps 20] [--adamw] [--repeats 3] [--out benchmarks/perf/results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, print_table, write_json  # noqa: E402

from pudm_bench.data.build import BuiltSplit, build_split
from pudm_bench.data.splits import get_split
from pudm_bench.training.batches import TrainingSet, batch_indices
from pudm_bench.training.config import SampleConfig, TrainConfig  # noqa: E402
from pudm_bench.training.loop import Callback, train
from pudm_bench.training.models import build_model  # noqa: E402
from pudm_bench.training.sampling import to_model_range  # noqa: E402


def synthetic_split(size: int = 32, channels: int = 3, unlabeled: int = 2200, labeled: int = 200) -> BuiltSplit:
    """Random images with a paper split's geometry (CIFAR10, 32 px RGB): the step's cost does not depend on pixels."""
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)  # noqa: E731
    spec = get_split("cifar10_vehicles")
    return BuiltSplit(spec=spec, seed=0, unlabeled=rand(unlabeled), unlabeled_is_sensitive=torch.zeros(unlabeled, dtype=torch.bool),
                      labeled_sensitive=rand(labeled), labeled_normal=rand(0), normal_test=rand(8), sensitive_test=rand(8),
                      indices={}, fingerprint="synthetic")


class Clock(Callback):
    def __init__(self) -> None:
        self.elapsed: dict[int, float] = {}

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.elapsed[step] = metrics["elapsed_s"]


def suite_step(split: BuiltSplit, preset: str, batch: int, steps: int, warmup: int, **method) -> float:
    """Seconds per step of pudm_bench's training loop, steps warmup+1 .. warmup+steps."""
    config = TrainConfig(split=split.spec.name, steps=warmup + steps, batch_size=batch, lr=1e-4, warmup_steps=0,
                         log_every=warmup, checkpoint_every=warmup + steps, model_preset=preset,
                         sample=SampleConfig(num_images=1, steps=1), **method)
    clock = Clock()
    with tempfile.TemporaryDirectory() as run_dir:
        train(config, split, run_dir, callbacks=[clock], resume=False)
    return (clock.elapsed[warmup + steps] - clock.elapsed[warmup]) / steps


def bare_step(split: BuiltSplit, preset: str, batch: int, steps: int, warmup: int, **adamw) -> float:
    """Seconds per step of the textbook loop: UNet forward, MSE, backward, AdamW (``adamw``: its implementation
    flags, e.g. foreach=True or fused=True); one fixed batch."""
    torch.manual_seed(0)
    model = build_model(preset, split.unlabeled.shape[-1], split.unlabeled.shape[1]).train()
    # The same AdamW kernel as the training loop (fused) unless the caller compares kernels.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **(adamw or {"fused": True}))
    x0 = to_model_range(split.unlabeled[:batch])

    def one() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        loss = torch.nn.functional.mse_loss(model(x0 + noise, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def data_step(split: BuiltSplit, batch: int, steps: int) -> float:
    """Seconds per step spent getting the batch: indices, gather from the uint8 tensor, convert to [-1, 1]."""
    data = TrainingSet.from_split(split, "pu")
    start = time.perf_counter()
    for step in range(steps):
        idx = batch_indices(len(data), batch, 0, step)
        x0, role = to_model_range(data.images[idx]), data.roles[idx]
    del x0, role
    return (time.perf_counter() - start) / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (digits; a quarter at 32 px)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--adamw", action="store_true",
                   help="also compare AdamW's loop, foreach and fused kernels (the measurement behind the training "
                        "loop's fused=True; not in run_all, to keep it under 10 minutes)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cases = [("digits (8 px, 1 ch)", build_split(get_split("digits_even")), "digits", 64, args.steps),
             ("32 px, 3 ch", synthetic_split(), "small", 32, max(8, args.steps // 4))]
    rows = []
    for label, split, preset, batch, steps in cases:
        warmup = max(3, steps // 5)
        times = interleaved({
            "bare": lambda: bare_step(split, preset, batch, steps, warmup),
            "unsupervised": lambda: suite_step(split, preset, batch, steps, warmup, method="unsupervised"),
            "pu_abs": lambda: suite_step(split, preset, batch, steps, warmup, method="pu", beta=0.1, correction="abs"),
            "pu_max": lambda: suite_step(split, preset, batch, steps, warmup, method="pu", beta=0.1, correction="max"),
            "data": lambda: data_step(split, batch, steps),
        }, args.repeats)
        rows.append({
            "case": label, "preset": preset, "batch": batch, "bare_ms": 1e3 * times["bare"],
            "pu_abs_ms": 1e3 * times["pu_abs"], "pu_max_ms": 1e3 * times["pu_max"],
            "unsup_ms": 1e3 * times["unsupervised"],
            "step_overhead_x": times["pu_abs"] / times["bare"],
            "pu_abs_vs_unsup_x": times["pu_abs"] / times["unsupervised"],
            "pu_max_vs_unsup_x": times["pu_max"] / times["unsupervised"],
            "data_share": times["data"] / times["pu_abs"],
        })
    print_table("Training step (median of interleaved repeats; targets: step_overhead_x <= 1.10, PU vs unsupervised "
                "<= 1.05, data_share < 0.05)", rows, list(rows[0]))

    # Which AdamW implementation the training loop should use: torch's default on CPU is the per-parameter loop.
    adamw_rows = []
    for label, split, preset, batch, steps in (cases if args.adamw else []):
        warmup = max(3, steps // 5)
        times = interleaved({
            "loop": lambda: bare_step(split, preset, batch, steps, warmup, foreach=False),
            "foreach": lambda: bare_step(split, preset, batch, steps, warmup, foreach=True),
            "fused": lambda: bare_step(split, preset, batch, steps, warmup, fused=True),
        }, args.repeats)
        adamw_rows.append({"case": label, **{f"{k}_ms": 1e3 * v for k, v in times.items()},
                           "fused_vs_loop_x": times["fused"] / times["loop"],
                           "foreach_vs_loop_x": times["foreach"] / times["loop"]})
    if adamw_rows:
        print_table("Bare step by AdamW implementation (median of interleaved repeats)", adamw_rows, list(adamw_rows[0]))
    write_json(args.out, "train_step", {"args": vars(args), "rows": rows, "adamw": adamw_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
