"""``python -m pudm_bench.train`` (``pudm-train``): one training run outside Ray: build the split, train (with the
class-prior estimator wired in for ``beta auto`` and the filter), save the pipeline, sample a grid, write
``metrics.json``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from pudm_bench import __version__
from pudm_bench.cli.common import run_command
from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ArgumentParser
from pudm_bench.prior.estimate import prior_step
from pudm_bench.training.checkpoint import latest_checkpoint, verify_checkpoint
from pudm_bench.training.config import AUTO, TRAIN_METHODS, SampleConfig, TrainConfig
from pudm_bench.training.denoiser import resolve_init_from
from pudm_bench.training.loop import Callback, save_pipeline, train
from pudm_bench.training.sampling import save_grid


def environment_info() -> dict[str, str]:
    import diffusers

    return {"pudm_bench": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


class JsonlLog(Callback):
    """Appends every logged metric dict to ``train_log.jsonl`` in the run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


class ProgressBar(Callback):
    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        shown = {k: f"{metrics[k]:.4g}" for k in ("loss", "positive_risk", "negative_risk") if k in metrics}
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


def default_run_dir(config: TrainConfig) -> Path:
    parts = [config.split, config.method]
    if config.method in ("pu", "pnu"):
        parts += [config.correction, "bauto" if config.beta == AUTO else f"b{config.beta:g}"]
    if config.init_from:
        parts.append("warm")
    if config.unlabeled_sensitive_share is not None:
        parts.insert(1, f"share{config.unlabeled_sensitive_share:g}")
    return Path("runs") / ("_".join(parts) + f"_s{config.seed}")


def run(config: TrainConfig, run_dir: Path, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Build the split, train, save the pipeline, sample a grid; returns (and writes) ``metrics.json``."""
    spec = get_split(config.split, config.splits_dirs, config.unlabeled_sensitive_share)
    split = build_split(spec, seed=config.split_seed, data_dir=config.data_dir, download=config.download)
    if config.init_from:
        resolve_init_from(config.init_from, split)  # another split or geometry: refused before anything is written
    start = latest_checkpoint(run_dir) if resume and run_dir.is_dir() else None
    start_step = int(verify_checkpoint(start)["step"]) if start is not None else 0  # a corrupt one: fail, write nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"config": config.to_dict(), "split": split.summary(), "environment": environment_info()}
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2))
    callbacks: list[Callback] = [JsonlLog(run_dir / "train_log.jsonl")]
    bar = ProgressBar(config.steps, start_step) if progress else None
    if bar is not None:
        callbacks.append(bar)
    try:
        result = train(config, split, run_dir, callbacks=callbacks, resume=resume, prior_step=prior_step)
    finally:
        if bar is not None:
            bar.close()
    save_pipeline(result, run_dir)
    sample_start = time.perf_counter()
    samples = result.generator(config.sample.num_images, sampler=config.sample.sampler, steps=config.sample.steps,
                               batch_size=config.sample.batch_size, seed=config.sample.seed).images
    grid = save_grid(samples, run_dir / "samples.png")
    metrics = {
        "split": split.spec.name,
        "split_fingerprint": split.fingerprint,
        "method": config.method,
        "steps": result.step,
        "resumed_from_step": result.resumed_from,
        "train_seconds": round(result.train_seconds, 3),
        "sample_seconds": round(time.perf_counter() - sample_start, 3),
        "final_train_metrics": result.metrics,
        **({"prior": result.prior_metrics} if result.prior_metrics else {}),
        "samples": {"path": grid.name, "count": int(samples.shape[0]), "sampler": config.sample.sampler,
                    "steps": config.sample.steps, "seed": config.sample.seed},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    s = SampleConfig()
    p = ArgumentParser(
        prog="python -m pudm_bench.train",
        description="Train one PU-DM model (or a baseline) on a sensitive split, sample from it, save a checkpoint, "
                    "a diffusers pipeline, a PNG grid and metrics.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--split", default=d.split, help="registered split name (python -m pudm_bench.splits list)")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs (repeatable)")
    p.add_argument("--method", default="pu", choices=list(TRAIN_METHODS),
                   help="filter = drop the images an nnPU classifier calls sensitive from U, then unsupervised")
    p.add_argument("--beta", type=_beta_arg, default=None, metavar="BETA|auto",
                   help="class prior in (0, 1), or auto to estimate it from U and S (pudm_bench.prior); required for "
                        "pu/pnu; for filter the share removed (default auto)")
    p.add_argument("--correction", default=d.correction, choices=["abs", "max"], help="absPU or nnPU correction")
    p.add_argument("--eta", type=float, default=None, help="weight of the labeled-normal term (pnu only; default 1.0)")
    p.add_argument("--equal-weighting", action="store_true",
                   help="baselines weight S equally with U instead of the paper's per-batch weighting")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (init, noise, data order)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed that draws the split's images")
    p.add_argument("--unlabeled-sensitive-share", type=float, default=None, metavar="SHARE",
                   help="split option: set the sensitive share of U (e.g. 0.05), keeping its normal images")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ema-decay", type=float, default=None, help="EMA of weights (e.g. 0.999); off by default")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--model-preset", default=None, help="override the split's model preset (digits, small, paper, paper256)")
    p.add_argument("--pretrained", default=None, metavar="DIR_OR_HUB_ID",
                   help="fine-tune this diffusers UNet/pipeline (model sd: a Stable Diffusion pipeline)")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR|PIPELINE",
                   help="warm start: begin from another run's final model (same split; fresh optimizer and schedule, "
                        "this run's --steps), e.g. a runs/<split>_unsupervised_s0 directory")
    p.add_argument("--model", default=d.model, choices=["unet", "sd"],
                   help="unet: pixel UNet2DModel (class-conditional on conditional splits); sd: fine-tune a Stable "
                        "Diffusion pipeline's UNet in latent space with the split's prompts (needs pudm_bench[sd])")
    p.add_argument("--lora-rank", type=int, default=None, help="model sd: train LoRA adapters of this rank only")
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale,
                   help="model sd: classifier-free guidance when sampling (1 = none)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="model sd: less memory, slower steps")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--data-dir", default=None, help="folder holding downloaded datasets (default $PUDM_BENCH_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")
    p.add_argument("--sampler", default=s.sampler, choices=["ddim", "ddpm"])
    p.add_argument("--sample-steps", type=int, default=s.steps)
    p.add_argument("--num-samples", type=int, default=s.num_images)
    p.add_argument("--sample-seed", type=int, default=s.seed)
    p.add_argument("--out", default=None, help="run directory (default runs/<split>_<method>..._s<seed>); re-running resumes")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and where results go, then exit")
    return p


def _beta_arg(text: str) -> float | str:
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or auto, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        split=args.split, method=args.method, beta=args.beta, correction=args.correction, eta=args.eta,
        paper_weighting=not args.equal_weighting, seed=args.seed, split_seed=args.split_seed, steps=args.steps,
        unlabeled_sensitive_share=args.unlabeled_sensitive_share,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, precision=args.precision, device=args.device,
        model_preset=args.model_preset, pretrained=args.pretrained, model=args.model, lora_rank=args.lora_rank,
        init_from=str(Path(args.init_from).expanduser().resolve()) if args.init_from else None,
        guidance_scale=args.guidance_scale, gradient_checkpointing=args.gradient_checkpointing,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None, download=args.download,
        splits_dirs=tuple(str(Path(p).resolve()) for p in args.splits_dir),
        sample=SampleConfig(sampler=args.sampler, steps=args.sample_steps, num_images=args.num_samples,
                            seed=args.sample_seed),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    spec = get_split(config.split, config.splits_dirs, config.unlabeled_sensitive_share)  # a bad split: before anything is written
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if args.dry_run:
        print(json.dumps({"config": config.to_dict(), "split_file": spec.source, "run_dir": str(run_dir.resolve())},
                         indent=2))
        return 0
    metrics = run(config, run_dir.resolve(), resume=not args.no_resume, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2))
    print(f"run directory: {run_dir.resolve()}  (samples.png, pipeline/, checkpoints/, metrics.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
