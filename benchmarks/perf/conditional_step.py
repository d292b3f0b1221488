"""What conditioning costs per training step (docs/performance.md, conditional and latent models):

1. the class-conditional UNet with the per-condition PU risk (``digits_even_cond``: two conditions) against the
   same UNet unconditional with the pooled risk (``digits_even``: same images, same batch);
2. the latent path (``--model sd``) on the tiny random Stable Diffusion pipeline: full fine-tuning against LoRA.

Per-step times come from the training loop's own clock (``elapsed_s`` in its log callbacks), after a warm-up
interval, so model construction and the one-off VAE/text encoding are not counted.

    python benchmarks/perf/conditional_step.py [--steps 40] [--repeats 3] [--out benchmarks/perf/results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, print_table, write_json  # noqa: E402
from train_step import Clock  # noqa: E402

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.training.config import SampleConfig, TrainConfig  # noqa: E402
from pudm_bench.training.loop import train  # noqa: E402


def step_seconds(split_name: str, steps: int, warmup: int, **changes) -> float:
    split = build_split(get_split(split_name))
    config = TrainConfig(split=split_name, method="pu", beta=0.1, steps=warmup + steps, batch_size=64, lr=1e-4,
                         warmup_steps=0, log_every=warmup, checkpoint_every=warmup + steps,
                         sample=SampleConfig(num_images=1, steps=1), **changes)
    clock = Clock()
    with tempfile.TemporaryDirectory() as run_dir:
        train(config, split, run_dir, callbacks=[clock], resume=False)
    return (clock.elapsed[warmup + steps] - clock.elapsed[warmup]) / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    from pudm_bench.training.latent import tiny_pipeline

    warmup = max(5, args.steps // 5)
    with tempfile.TemporaryDirectory() as folder:
        sd = str(tiny_pipeline(Path(folder) / "tiny-sd"))
        times = interleaved({
            "unet": lambda: step_seconds("digits_even", args.steps, warmup),
            "unet_conditional": lambda: step_seconds("digits_even_cond", args.steps, warmup),
            "sd_full": lambda: step_seconds("digits_even_cond", args.steps, warmup, model="sd", pretrained=sd),
            "sd_lora": lambda: step_seconds("digits_even_cond", args.steps, warmup, model="sd", pretrained=sd,
                                            lora_rank=4),
        }, args.repeats)
    rows = [{"case": name, "step_ms": 1e3 * seconds, "vs_unet_x": seconds / times["unet"]}
            for name, seconds in times.items()]
    print_table("PU-DM step at batch 64 on digits (median of interleaved repeats; target: conditional <= 1.10x)",
                rows, list(rows[0]))
    write_json(args.out, "conditional_step", {"rows": rows, "steps": args.steps, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
