"""Data-parallel scaling with Ray Train (docs/performance.md, item 6): the same global batch on 1 worker and on 2
workers (DDP, gloo on CPU / NCCL on GPU), throughput ratio, the cost of one gradient all-reduce, and the cost of the
all-reduce of the PU risk's statistics that makes the loss the global batch's (training/distributed.py).

Each worker runs the suite's own model preset and the loop's PU step (forward, per-example error, PU risk from the
statistics summed over ranks, backward, AdamW) on its share of a synthetic batch (9% of it labeled sensitive); CPUs
are split evenly (1 worker x all threads against 2 workers x half each).

    python benchmarks/perf/ddp_scaling.py [--preset digits] [--batch 64] [--steps 40] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

SIZES = {"digits": (8, 1), "small": (32, 3)}


def worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from pudm_bench.training.distributed import global_sum
    from pudm_bench.training.losses import LABELED_SENSITIVE, UNLABELED, denoising_error, risk_statistics, training_risk
    from pudm_bench.training.models import build_model

    context = ray.train.get_context()
    world = context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    size, channels = SIZES[config["preset"]]
    torch.manual_seed(0)
    model = build_model(config["preset"], size, channels).to(device)
    model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    local = config["batch"] // world
    x0 = torch.randn(local, channels, size, size, device=device)
    role = torch.where(torch.rand(local, device=device) < 0.09, LABELED_SENSITIVE, UNLABELED)
    reduce = global_sum if world > 1 else None

    def step() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (local,), device=device)
        error = denoising_error(model(x0 + noise, t).sample, noise)
        loss = training_risk("pu", error, role, beta=0.1, correction="abs", reduce=reduce).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(config["warmup"]):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(config["steps"]):
        step()
    sync()
    step_seconds = (time.perf_counter() - start) / config["steps"]
    allreduce_seconds = statistics_seconds = 0.0
    if world > 1:  # one all-reduce of a gradient-sized buffer, as DDP does per step (in buckets)
        buffer = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
        for _ in range(3):
            dist.all_reduce(buffer)
        sync()
        start = time.perf_counter()
        for _ in range(10):
            dist.all_reduce(buffer)
        sync()
        allreduce_seconds = (time.perf_counter() - start) / 10
        # The extra collective of the global-batch risk: a few scalars forward, the same backward.
        statistics = risk_statistics(torch.rand(local, device=device, requires_grad=True), role)
        for _ in range(10):
            global_sum(statistics).sum().backward(retain_graph=True)
        sync()
        start = time.perf_counter()
        for _ in range(100):
            global_sum(statistics).sum().backward(retain_graph=True)
        sync()
        statistics_seconds = (time.perf_counter() - start) / 100
    if context.get_world_rank() == 0:  # Train V2's Result carries metrics only with a checkpoint: use a file
        import json

        Path(config["result_file"]).write_text(json.dumps({
            "step_seconds": step_seconds, "allreduce_seconds": allreduce_seconds,
            "risk_allreduce_seconds": statistics_seconds,
            "params": sum(p.numel() for p in model.parameters())}))


def run(workers: int, args: argparse.Namespace, cpus: int) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    per_worker = max(1, cpus // workers) if not args.gpu else 1
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"preset": args.preset, "batch": args.batch, "steps": args.steps, "warmup": 5,
                           "threads": per_worker, "result_file": str(Path(args.storage) / f"result-{workers}.json")},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=args.gpu,
                                               resources_per_worker={"CPU": per_worker} if not args.gpu else None),
        run_config=ray.train.RunConfig(name=f"ddp-{workers}", storage_path=args.storage,
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    metrics = json.loads((Path(args.storage) / f"result-{workers}.json").read_text())
    return {"workers": workers, "threads_per_worker": per_worker, "step_ms": 1e3 * metrics["step_seconds"],
            "images_per_s": args.batch / metrics["step_seconds"], "allreduce_ms": 1e3 * metrics["allreduce_seconds"],
            "risk_allreduce_ms": 1e3 * metrics["risk_allreduce_seconds"],
            "params": metrics["params"], "fit_wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=64, help="global batch (split across workers)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (needs 2 GPUs for the 2-worker run)")
    p.add_argument("--storage", default="/tmp/pudm-perf-ddp")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    Path(args.storage).mkdir(parents=True, exist_ok=True)
    rows = [run(1, args, cpus), run(2, args, cpus)]
    ray.shutdown()
    rows[1]["speedup_vs_1"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    rows[1]["allreduce_share"] = rows[1]["allreduce_ms"] / rows[1]["step_ms"]
    rows[1]["risk_allreduce_share"] = rows[1]["risk_allreduce_ms"] / rows[1]["step_ms"]
    print_table(f"Ray Train data parallel, preset {args.preset}, global batch {args.batch}, "
                f"{'GPU' if args.gpu else f'{cpus} CPUs'}", rows,
                ["workers", "threads_per_worker", "step_ms", "images_per_s", "speedup_vs_1", "allreduce_ms",
                 "allreduce_share", "risk_allreduce_ms", "risk_allreduce_share", "params", "fit_wall_s"])
    write_json(args.out, f"ddp_scaling_{args.preset}{'_gpu' if args.gpu else ''}", {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
