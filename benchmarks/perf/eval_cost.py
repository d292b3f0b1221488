"""Evaluation cost, side by side in one run (docs/performance.md, item 4):

- sampling time per image with DDIM-25/50/100 and DDPM-1000 from one trained digits model, and the scores each
  gives (non-sensitive rate, fd_classifier), so the cost-quality trade is visible;
- feature-extraction throughput of the referee (non-sensitive rate, fd_classifier) and of pytorch-fid's
  Inception-v3 (FID; untrained weights, identical compute, so nothing needs downloading).

The model: ``--pipeline DIR`` (a DDPMPipeline folder, e.g. a sweep trial's ``final/pipeline``), else one trained
here with the cpu budget (600 steps on digits_even, about a minute on 2 cores).

    python benchmarks/perf/eval_cost.py [--samples 200] [--pipeline DIR] [--out benchmarks/perf/results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.scoring.evaluate import EvalConfig, score_images  # noqa: E402
from pudm_bench.scoring.referee import get_referee  # noqa: E402
from pudm_bench.training.config import SampleConfig, TrainConfig  # noqa: E402
from pudm_bench.training.loop import train  # noqa: E402
from pudm_bench.training.sampling import sample_images  # noqa: E402

SAMPLERS = (("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 1000))


def trained_model(split, pipeline: str | None):
    if pipeline:
        from diffusers import DDPMPipeline

        loaded = DDPMPipeline.from_pretrained(pipeline)
        return loaded.unet.eval(), loaded.scheduler, 0.0
    config = TrainConfig(split=split.spec.name, method="pu", beta=0.15, correction="abs", steps=600, batch_size=64,
                         lr=1e-3, warmup_steps=50, log_every=100, checkpoint_every=600,
                         sample=SampleConfig(num_images=1, steps=1))
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, split, run_dir, resume=False)
    return result.model.eval(), result.noise_scheduler, result.train_seconds


def fid_inception():
    import pytorch_fid.inception

    from pudm_bench.scoring.fid import _patched, untrained_fid_inception

    network = untrained_fid_inception()  # built first: the patch below must not see itself
    with _patched(pytorch_fid.inception, fid_inception_v3=lambda: network):
        return pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=64, help="images per sampler")
    p.add_argument("--pipeline", default=None, help="DDPMPipeline folder to sample from (default: train one)")
    p.add_argument("--fid-images", type=int, default=32, help="images for the Inception throughput")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()

    split = build_split(get_split("digits_even"))
    model, scheduler, train_seconds = trained_model(split, args.pipeline)
    referee = get_referee(split.spec)
    config = EvalConfig(quality_metric="fd_classifier", fid="off")
    rows = []
    for sampler, steps in SAMPLERS:
        start = time.perf_counter()
        images = sample_images(model, scheduler, num_images=args.samples, sampler=sampler, steps=steps, seed=1234)
        seconds = time.perf_counter() - start
        scores = score_images(images, split, config, referee)
        rows.append({"sampler": f"{sampler}-{steps}", "ms_per_image": 1e3 * seconds / args.samples,
                     "vs_ddpm1000": None, "non_sensitive_rate": scores["non_sensitive_rate"],
                     "fd_classifier": scores["fd_classifier"]})
    ddpm = rows[-1]["ms_per_image"]
    for row in rows:
        row["vs_ddpm1000"] = row["ms_per_image"] / ddpm
    print_table(f"Sampling {args.samples} digits images (model trained {train_seconds:.0f} s; scores by the "
                "digits_even referee)", rows, list(rows[0]))

    features = []
    images = split.normal_test[:1000].repeat(3, 1, 1, 1)[:2000]
    start = time.perf_counter()
    referee.logits_and_features(images)
    seconds = time.perf_counter() - start
    features.append({"extractor": "referee (small CNN, 8 px)", "images": len(images),
                     "images_per_s": len(images) / seconds})
    inception = fid_inception()
    from pudm_bench.scoring.fid import inception_features

    few = split.normal_test[:args.fid_images]
    inception_features(inception, few[:2], batch_size=2)  # warm-up
    start = time.perf_counter()
    inception_features(inception, few, batch_size=32)
    seconds = time.perf_counter() - start
    features.append({"extractor": "Inception-v3 (FID, resized to 299 px)", "images": len(few),
                     "images_per_s": len(few) / seconds})
    print_table("Feature extraction throughput", features, list(features[0]))
    write_json(args.out, "eval_cost", {"args": vars(args), "train_seconds": train_seconds, "sampling": rows,
                                       "features": features})
    return 0


if __name__ == "__main__":
    sys.exit(main())
