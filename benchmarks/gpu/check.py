"""The prepared GPU check: one command, on a bare GPU machine, inside 10 minutes (benchmarks/gpu/README.md).

Measures, on the GPU it finds:
1. a training step of the paper's UNet (61M parameters) at 32 px batch 128 and 96 px batch 32, bare (forward, MSE,
   backward, AdamW) and in the suite's loop (``training.loop.train``: per-example error, PU risk from its
   statistics, clipping, schedule), each in fp16 (GradScaler) and bf16 autocast: ms/step, images/s, peak memory;
2. DDIM-50 sampling images/s at 32 and 96 px (``training.sampling``, the evaluation's sampler);
3. Inception feature images/s (pytorch-fid's FID Inception at 299 px, untrained weights: the same speed);
4. a short unsupervised-vs-PU comparison on real MNIST at 32 px (even digits normal, odd sensitive, U 4,500 + 450,
   S 450; the paper's UNet, same seed and schedule), scored by the suite's evaluation (rate, realism, recall).

It imports torch, diffusers, pytorch-fid, torchvision, numpy, scipy, PIL, yaml and this repository's package (not
Ray, MLflow or Optuna). ``--tiny`` runs every section at toy sizes on a CPU (tests/test_gpu_check.py).

    python benchmarks/gpu/check.py --data-dir DIR [--out DIR] [--tiny]     # DIR/MNIST/raw/*-ubyte
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the full check (a GPU, under 10 minutes) or ``--tiny`` (a CPU, seconds)."""

    preset: str
    step_shapes: tuple[tuple[int, int], ...]  # (image size, batch)
    warmup: int
    timed: int
    sample_counts: dict[int, int]  # image size -> images sampled with DDIM-50
    sample_steps: int
    inception_images: int
    compare_size: int
    compare_channels: int
    compare_steps: int
    compare_batch: int
    compare_samples: int
    counts: dict[str, int] = field(default_factory=dict)
    referee_floor: float = 0.9
    referee_epochs: int | None = None  # None: the referee's default for the split
    diversity: str = "auto"  # coverage and precision/recall (a second, per-class referee)


FULL = Sizes(preset="paper", step_shapes=((32, 128), (96, 32)), warmup=5, timed=30, sample_counts={32: 512, 96: 128},
             sample_steps=50, inception_images=2000, compare_size=32, compare_channels=3, compare_steps=3000,
             compare_batch=128, compare_samples=1000,
             counts={"unlabeled_normal": 4500, "unlabeled_sensitive": 450, "labeled_sensitive": 450})
TINY = Sizes(preset="tiny", step_shapes=((16, 4),), warmup=1, timed=2, sample_counts={16: 4}, sample_steps=3,
             inception_images=4, compare_size=16, compare_channels=1, compare_steps=6, compare_batch=8,
             compare_samples=16, counts={"unlabeled_normal": 30, "unlabeled_sensitive": 3, "labeled_sensitive": 6},
             referee_floor=0.0, referee_epochs=1, diversity="off")  # a toy referee on random pixels cannot pass the floor: tiny tests the plumbing


def precisions(device) -> list[str]:
    """fp16 (the paper's choice, with a GradScaler) and bf16 where the GPU has it; bf16 and fp32 on a CPU."""
    import torch

    if device.type != "cuda":
        return ["fp32", "bf16"]
    return ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def write_split(folder: Path, name: str, size: int, channels: int, preset: str, counts: dict[str, int]) -> Path:
    """A split of real MNIST at this geometry: normal = even digits, sensitive = odd (the mnist_even family)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "dataset": "mnist", "description": "GPU check: real MNIST, even digits normal",
        "normal_classes": ["zero", "two", "four", "six", "eight"],
        "sensitive_classes": ["one", "three", "five", "seven", "nine"],
        "counts": {**counts, "normal_test": "all"}, "image_size": size, "channels": channels,
        "model_preset": preset, "quality_metric": "fd_per_class"}, sort_keys=False))
    return path


def bare_step(preset: str, size: int, batch: int, precision: str, sizes: Sizes, device) -> dict[str, Any]:
    """The model alone: forward, plain MSE, backward, fused AdamW, in ``precision`` autocast."""
    import torch

    from pudm_bench.training.batches import autocast_dtype
    from pudm_bench.training.models import build_model

    torch.manual_seed(0)
    model = build_model(preset, size, 3).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(batch, 3, size, size, device=device)
    reset_peak(device)

    def step() -> None:
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x + noise, t).sample.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(sizes.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(sizes.timed):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / sizes.timed
    params = sum(p.numel() for p in model.parameters())
    return {"ms_per_step": 1e3 * seconds, "images_per_s": batch / seconds, "peak_gib": peak_gib(device),
            "params_m": params / 1e6}


def loop_step(split, preset: str, size: int, batch: int, precision: str, sizes: Sizes, device,
              run_dir: Path) -> dict[str, Any]:
    """The suite's own loop (``train``) on a real split of this geometry: PU abs risk, clipping, cosine schedule;
    the time between the log after the warm-up steps and the last log, per step."""
    from pudm_bench.training.config import SampleConfig, TrainConfig
    from pudm_bench.training.loop import Callback, train

    total = sizes.warmup + sizes.timed
    marks: dict[int, float] = {}

    class Clock(Callback):
        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            marks[step] = metrics["elapsed_s"]

    config = TrainConfig(split=split.spec.name, method="pu", beta=0.1, correction="abs", steps=total,
                         batch_size=batch, lr=1e-4, warmup_steps=1, precision=precision, device=device.type,
                         model_preset=preset, log_every=sizes.warmup, checkpoint_every=total,
                         splits_dirs=(str(run_dir.parent / "splits"),), sample=SampleConfig(num_images=2, steps=2))
    reset_peak(device)
    train(config, split, run_dir, callbacks=[Clock()], resume=False)
    seconds = (marks[total] - marks[sizes.warmup]) / sizes.timed
    return {"ms_per_step": 1e3 * seconds, "images_per_s": batch / seconds, "peak_gib": peak_gib(device)}


def sampling_rate(preset: str, size: int, count: int, sizes: Sizes, device) -> dict[str, Any]:
    """DDIM images/s of the evaluation's sampler on a fresh model (the weights do not change the cost)."""
    import torch

    from pudm_bench.training.models import build_model, build_noise_scheduler
    from pudm_bench.training.sampling import PixelGenerator

    torch.manual_seed(0)
    model = build_model(preset, size, 3).to(device).eval()
    generator = PixelGenerator(model, build_noise_scheduler())
    generator(min(count, 8), sampler="ddim", steps=2, seed=0, device=device)  # warm-up (kernels, allocator)
    synchronize(device)
    start = time.perf_counter()
    generator(count, sampler="ddim", steps=sizes.sample_steps, seed=1, device=device, batch_size=count)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images": count, "sampler": f"DDIM-{sizes.sample_steps}", "images_per_s": count / seconds}


def inception_rate(sizes: Sizes, device) -> dict[str, Any]:
    import torch

    import pytorch_fid.inception as fid_inception

    from pudm_bench.scoring.fid import inception_features, untrained_fid_inception

    # pytorch-fid's InceptionV3 (resize to 299, the 2048-d pool block) over untrained weights: its weights fetch is
    # answered with the untrained network's state, so nothing is downloaded; the cost is the same.
    state = untrained_fid_inception().state_dict()
    fetch = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                          normalize_input=True, use_fid_inception=True).to(device).eval()
    finally:
        fid_inception.load_state_dict_from_url = fetch
    images = torch.randint(0, 256, (sizes.inception_images, 3, 32, 32), dtype=torch.uint8)
    inception_features(model, images[:8], batch_size=8, device=device)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    inception_features(model, images, batch_size=200, device=device)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images": sizes.inception_images, "images_per_s": sizes.inception_images / seconds}


def compare(split, sizes: Sizes, device, work: Path, data_dir: str) -> list[dict[str, Any]]:
    """Unsupervised vs PU (abs, beta 0.1, the true share is 450 / 4,950 = 0.091) from scratch, same seed, scored by
    the suite's evaluation on ``compare_samples`` DDIM-50 samples."""
    from pudm_bench.scoring.evaluate import EvalConfig, evaluate_model
    from pudm_bench.training.config import SampleConfig, TrainConfig
    from pudm_bench.training.loop import train

    evaluation = EvalConfig(num_samples=sizes.compare_samples, sampler="ddim", sample_steps=sizes.sample_steps,
                            fid="off", diversity=sizes.diversity, referee_floor=sizes.referee_floor,
                            referee_epochs=sizes.referee_epochs,
                            cache_dir=str(work / "cache"))
    rows = []
    for method, beta in (("unsupervised", None), ("pu", 0.1)):
        config = TrainConfig(split=split.spec.name, method=method, beta=beta, correction="abs",
                             steps=sizes.compare_steps, batch_size=sizes.compare_batch, lr=2e-4,
                             warmup_steps=max(1, sizes.compare_steps // 30), ema_decay=0.999,
                             device=device.type, model_preset=sizes.preset, log_every=max(1, sizes.compare_steps // 10),
                             checkpoint_every=sizes.compare_steps, data_dir=data_dir,
                             splits_dirs=(str(work / "splits"),), sample=SampleConfig(num_images=2, steps=2))
        result = train(config, split, work / method, resume=False)
        start = time.perf_counter()
        metrics = evaluate_model(result.generator, split, evaluation, data_dir=data_dir, device=device,
                                 grid_path=work / f"{method}.png")
        rows.append({"method": method if beta is None else f"pu abs beta {beta}", "train_s": result.train_seconds,
                     "eval_s": time.perf_counter() - start,
                     **{k: metrics.get(k) for k in ("non_sensitive_rate", "realistic_share",
                                                    "realistic_non_sensitive_rate", "fd_per_class", "recall",
                                                    "precision", "coverage_missing")}})
    return rows


def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                   help="folder with MNIST/raw/*-ubyte (real MNIST for section 4)")
    p.add_argument("--out", default=None, help="folder for check.json, check.md and the sample grids")
    p.add_argument("--tiny", action="store_true", help="toy sizes on any device (a CPU test of every section)")
    p.add_argument("--budget-minutes", type=float, default=9.5,
                   help="sections that would start after this many minutes are skipped (and listed)")
    args = p.parse_args(argv)

    import torch

    from pudm_bench.data.build import build_split
    from pudm_bench.data.splits import load_split_file

    sizes = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("no GPU visible: run with --tiny on a CPU (the full check is for a GPU)", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="pudm-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pudm-gpu-work-"))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                    "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny},
        "steps": [], "sampling": [], "inception": [], "compare": [], "skipped": []}

    def section(name: str, body: Callable[[], None]) -> None:
        if (time.perf_counter() - started) / 60 > args.budget_minutes:
            report["skipped"].append(name)
            return
        print(f"[check] {name} ...", flush=True)
        body()

    splits = {}
    for size, _ in sizes.step_shapes:
        path = write_split(work / "splits", f"gpu_check_{size}", size, 3, sizes.preset, sizes.counts)
        splits[size] = build_split(load_split_file(path), data_dir=args.data_dir)

    def steps() -> None:
        for size, batch in sizes.step_shapes:
            for precision in precisions(device):
                bare = bare_step(sizes.preset, size, batch, precision, sizes, device)
                loop = loop_step(splits[size], sizes.preset, size, batch, precision, sizes, device,
                                 work / f"loop_{size}_{precision}")
                report["steps"].append({"size": size, "batch": batch, "precision": precision,
                                        "params_m": bare["params_m"], "bare_ms": bare["ms_per_step"],
                                        "loop_ms": loop["ms_per_step"], "loop_vs_bare": loop["ms_per_step"]
                                        / bare["ms_per_step"], "bare_images_per_s": bare["images_per_s"],
                                        "bare_peak_gib": bare["peak_gib"], "loop_peak_gib": loop["peak_gib"]})

    def sampling() -> None:
        for size, count in sizes.sample_counts.items():
            report["sampling"].append({"size": size, **sampling_rate(sizes.preset, size, count, sizes, device)})

    def inception() -> None:
        report["inception"].append(inception_rate(sizes, device))

    def comparison() -> None:
        path = write_split(work / "splits", "gpu_check_compare", sizes.compare_size, sizes.compare_channels,
                           sizes.preset, sizes.counts)
        split = build_split(load_split_file(path), data_dir=args.data_dir)
        report["compare"] = compare(split, sizes, device, work, args.data_dir)
        for grid in work.glob("*.png"):
            (out / grid.name).write_bytes(grid.read_bytes())

    for name, body in (("steps", steps), ("sampling", sampling), ("inception", inception), ("compare", comparison)):
        section(name, body)
    report["wall_s"] = time.perf_counter() - started
    text = "\n".join(filter(None, [
        f"GPU check on {report['machine']['gpu'] or 'CPU (tiny)'}, torch {torch.__version__}, "
        f"{report['wall_s']:.0f} s" + (f"; skipped: {', '.join(report['skipped'])}" if report["skipped"] else ""),
        markdown("Training step (bare model vs the suite's loop)", report["steps"]),
        markdown("Sampling", report["sampling"]), markdown("Inception features", report["inception"]),
        markdown("Unsupervised vs PU on real MNIST", report["compare"])]))
    (out / "check.json").write_text(json.dumps(report, indent=2))
    (out / "check.md").write_text(text + "\n")
    print(text)
    print(f"[check] written: {out / 'check.json'}, {out / 'check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
