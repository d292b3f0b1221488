"""The pilot runs behind docs/results.md's "Learning real MNIST on a CPU" and "Why PU degrades on real MNIST": one
training run on one CPU thread, then 1,000 DDIM samples scored like a sweep trial (``evaluate.score_images``).

    python benchmarks/pilots/mnist16_pilot.py --data-dir ../shared/data/mnist --out pilots/u_s3000 \\
        --method unsupervised --steps 3000 --batch-size 64 --lr 1e-3 --ema-decay 0.999
    python benchmarks/pilots/mnist16_pilot.py --data-dir ../shared/data/mnist --out pilots/w_pu_b0.1 \\
        --method pu --beta 0.1 --steps 1000 --lr 1e-4 --warmup-steps 50 --ema-decay 0.999 \\
        --init-from pilots/u_s3000/run
    python benchmarks/pilots/mnist16_pilot.py --data-dir ../shared/data/mnist --out pilots/u_s3000 --rescore \\
        --sample-steps 25          # re-sample the trained model with another sampler setting

Writes OUT/run/ (the training run: pipeline/, checkpoints/), OUT/samples.pt, OUT/grid.png (the first 100 samples)
and OUT/metrics.json; prints one JSON line with the scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.prior.estimate import prior_step
from pudm_bench.scoring.evaluate import EvalConfig, score_images
from pudm_bench.scoring.referee import get_class_referee, get_referee
from pudm_bench.training.config import TrainConfig
from pudm_bench.training.denoiser import load_generator
from pudm_bench.training.loop import save_pipeline, train
from pudm_bench.training.sampling import save_grid

SHOWN = ("non_sensitive_rate", "realistic_non_sensitive_rate", "realistic_share", "fd_per_class", "fd_classifier",
         "precision", "recall", "coverage_tv", "coverage_missing", "coverage_missing_classes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--split", default="mnist_even_16")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--method", default="unsupervised")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--correction", default="abs")
    p.add_argument("--model-preset", default="small")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--init-from", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a benchmark run gets one)")
    p.add_argument("--cache-dir", default=None, help="referee cache (default $PUDM_BENCH_CACHE)")
    p.add_argument("--rescore", action="store_true", help="sample and score OUT/run's model again; no training")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    config = TrainConfig(split=a.split, method=a.method, beta=a.beta, correction=a.correction, seed=a.seed,
                         steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                         ema_decay=a.ema_decay, model_preset=a.model_preset, init_from=a.init_from, log_every=100,
                         checkpoint_every=100_000, data_dir=a.data_dir, device="cpu")
    split = build_split(get_split(a.split), data_dir=a.data_dir)
    a.out.mkdir(parents=True, exist_ok=True)
    info: dict = {"args": {k: str(v) for k, v in vars(a).items()}}
    if a.rescore:
        generator = load_generator(a.out / "run" / "pipeline", config, split, "cpu")
    else:
        start = time.perf_counter()
        result = train(config, split, a.out / "run", resume=False, prior_step=prior_step)
        info.update(train_s=time.perf_counter() - start, final=result.metrics)
        save_pipeline(result, a.out / "run")
        generator = result.generator
    start = time.perf_counter()
    samples = generator(a.num_samples, sampler="ddim", steps=a.sample_steps, batch_size=250, seed=1234).images
    info["sample_s"] = time.perf_counter() - start
    suffix = "" if not a.rescore else f"_ddim{a.sample_steps}"
    torch.save(samples, a.out / f"samples{suffix}.pt")
    save_grid(samples[:100], a.out / f"grid{suffix}.png")
    referee = get_referee(split.spec, data_dir=a.data_dir, cache_dir=a.cache_dir)
    class_referee = get_class_referee(split.spec, data_dir=a.data_dir, cache_dir=a.cache_dir)
    scores = score_images(samples, split, EvalConfig(num_samples=a.num_samples, fid="off", cache_dir=a.cache_dir),
                          referee, class_referee=class_referee)
    info.update({k: v for k, v in scores.items() if k != "coverage_per_class"})
    (a.out / f"metrics{suffix}.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps({k: info.get(k) for k in (*SHOWN, "train_s", "sample_s")}, default=str))


if __name__ == "__main__":
    main()
