"""The settings of a sweep and of a benchmark: one base (``ExecutionSettings``: where runs go, how trials are
placed, where they are tracked), resolved once from the command line, saved as the run's state file and compared
field by field on ``--resume``.

A sweep and a benchmark differ only in what they run (a search space, or a suite's fixed cells); every step they
share (resolution, the resume check, the state file) is written here once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import METRIC_DIRECTIONS, RATE, Constraint, parse_constraint

# The Tune trial function only waits on its TorchTrainer (0 CPUs is refused by Tune).
TRIAL_DRIVER_CPU = 0.01
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True, kw_only=True)
class ExecutionSettings:
    """What a sweep and a benchmark both need: the run's name and storage, its MLflow store and experiment, the
    data, the budget, the referee's floor, and how each trial is placed (workers, CPUs, GPUs, retries)."""

    name: str
    storage: str
    experiment: str
    mlflow_uri: str
    budget: str
    splits_dirs: tuple[str, ...] = ()
    data_dir: str | None = None
    download: bool = False
    max_concurrent: int = 2
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: auto, resolved once Ray is up (1 when the cluster has GPUs)
    max_failures: int = 1
    referee_floor: float = 0.9
    referee_epochs: int | None = None  # None: the budget's choice
    budget_choice: str = "requested"  # why this budget: "requested", or what --budget auto found
    # Seconds a trial's workers may wait to be placed; None: refuse up front on a fixed cluster, 600 s on one that
    # can grow (orchestration.placement).
    placement_timeout: float | None = None

    KIND: ClassVar[str] = "run"
    STATE_FILE: ClassVar[str] = "state.json"
    # Fields that may differ between a run and its resumption: where it is tracked and how it is scheduled, not
    # what it computes.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("max_concurrent", "mlflow_uri", "data_dir", "download", "max_failures",
                                            "gpus_per_worker", "budget_choice", "placement_timeout")

    @property
    def run_dir(self) -> Path:
        return Path(self.storage) / self.name

    @property
    def state_file(self) -> Path:
        return self.run_dir / self.STATE_FILE


@dataclass(frozen=True, kw_only=True)
class SweepSettings(ExecutionSettings):
    """A sweep: the split, the search space and the search (trials, sampler, objectives, constraints)."""

    split: str
    search_space: str
    search_space_fingerprint: str
    quality: str
    trials: int
    seed: int = 0
    sampler: str = "tpe"
    baselines: bool = True
    pretrained: str | None = None  # fine-tune every trial from this diffusers UNet/pipeline (folder or hub id)
    # Objectives beyond (non_sensitive_rate, quality), each with its METRIC_DIRECTIONS direction, and constraints
    # ("coverage_tv<=0.15"): trials that break one are kept, flagged and left off the front.
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # resolved: the default ones (unless turned off) and the user's
    default_constraints: bool = True
    # The model every trial trains (config.MODELS): unet, or sd (latent Stable Diffusion from --pretrained).
    model: str = "unet"
    lora_rank: int | None = None
    guidance_scale: float = 1.0
    gradient_checkpointing: bool = False
    # Successive halving (``--scheduler moasha``, search.rungs): trials scored at ``rungs`` (fractions of their
    # steps, on ``rung_samples`` samples; None: the budget's share) and stopped there unless in the top
    # 1/reduction_factor. ``rungs`` with fifo: scored there (curves in MLflow), never stopped.
    scheduler: str = "fifo"
    reduction_factor: int = 3
    rungs: tuple[float, ...] = ()
    rung_samples: int | None = None
    # ``--warm-start baseline``: the searched trials fine-tune the sweep's own unsupervised baseline (which runs
    # first) for ``warm_start_fraction`` of the budget's steps; None: every trial from scratch.
    warm_start: str | None = None
    warm_start_fraction: float = 1 / 3

    KIND: ClassVar[str] = "sweep"
    STATE_FILE: ClassVar[str] = "sweep.json"
    # default_constraints: what it turns on is compared as the resolved ``constraints``.
    RESUMABLE: ClassVar[tuple[str, ...]] = ExecutionSettings.RESUMABLE + ("default_constraints",)

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [parse_constraint(text, METRIC_DIRECTIONS) for text in self.constraints]

    @property
    def objective_directions(self) -> list[tuple[str, str]]:
        """Every objective of the search with its direction, the two fixed ones first."""
        return [(RATE, "max"), (self.quality, "min")] + [(m, METRIC_DIRECTIONS[m]) for m in self.objectives]


@dataclass(frozen=True, kw_only=True)
class BenchmarkSettings(ExecutionSettings):
    """A benchmark: a suite's splits x methods x seeds."""

    suite: str
    suite_file: str
    seeds: int
    pretrained: tuple[tuple[str, str], ...] = ()  # (dataset or split or "*", model) pairs
    # The seeds run are first_seed .. first_seed + seeds - 1: a long benchmark run in parts (one part per seed, say)
    # whose runs files ``--merge`` combines into one table.
    first_seed: int = 0

    KIND: ClassVar[str] = "benchmark"
    STATE_FILE: ClassVar[str] = "benchmark.json"


# ----------------------------------------------------------------------------------------------------------------
# Resolution from the command line (the options cli.common.add_execution_arguments adds)


def check_name(name: str, flag: str) -> str:
    """A run name that is safe as a folder name (the run's storage is ``<storage>/<name>``): no ``..``, path
    separators or spaces. Experiment names follow the same rule (``tracking.check_experiment_name``)."""
    if not _NAME_RE.fullmatch(str(name)) or ".." in str(name):
        raise ConfigError(f"{flag}={name!r} is invalid: use letters, digits, '_', '-' or '.' (at most 128, starting "
                          "with a letter or digit), no spaces, no path separators and no '..'")
    return str(name)


def at_least(flag: str, value: float, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{flag}={value} is invalid: expected a number >= {minimum}")


def resolve_execution(args: argparse.Namespace, *, name: str, experiment: str, budget: str,
                      budget_choice: str = "requested") -> dict[str, Any]:
    """The ``ExecutionSettings`` fields from parsed arguments, each checked with a one-line error naming the option:
    the name and experiment (folder-safe), the storage (an absolute filesystem path), the tracking URI, trial
    resources and the referee's options."""
    from pudm_bench.tracking import check_experiment_name, resolve_tracking_uri

    for flag, minimum in (("max_concurrent", 1), ("workers_per_trial", 1), ("max_failures", 0)):
        at_least(f"--{flag.replace('_', '-')}", getattr(args, flag), minimum)
    if args.referee_epochs is not None:
        at_least("--referee-epochs", args.referee_epochs)
    if args.placement_timeout is not None and not args.placement_timeout > 0:
        raise ConfigError(f"--placement-timeout={args.placement_timeout} is invalid: expected seconds > 0")
    if not 0.0 <= args.referee_floor <= 1.0:
        raise ConfigError(f"--referee-floor={args.referee_floor} is invalid: expected a number in [0, 1]")
    return dict(
        name=check_name(name, "--name"), storage=storage_path(args.storage),
        experiment=check_experiment_name(experiment), mlflow_uri=resolve_tracking_uri(args.mlflow_uri),
        budget=budget, splits_dirs=tuple(str(Path(d).resolve()) for d in args.splits_dir),
        data_dir=data_dir_path(args.data_dir, args.download), download=args.download,
        max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=cpus_per_worker(args), gpus_per_worker=gpus_per_worker(args),
        max_failures=args.max_failures, referee_floor=args.referee_floor, referee_epochs=args.referee_epochs,
        budget_choice=budget_choice, placement_timeout=args.placement_timeout,
    )


def resolve_budget(requested: str, args: argparse.Namespace) -> tuple[str, str]:
    """The budget a run uses and why (``placement.budget_for_cluster``; ``auto`` asks the cluster for GPUs)."""
    from pudm_bench.orchestration.placement import budget_for_cluster, cluster_shape

    return budget_for_cluster(requested, lambda: cluster_shape(args.ray_address, args.num_cpus),
                              gpus_per_worker(args))


def data_dir_path(data_dir: str | None, download: bool) -> str | None:
    """--data-dir as an absolute path: a folder, or (with --download) a path where one can be made."""
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--data-dir={data_dir!r} is a file, not a folder; give the folder that holds the datasets")
    if not path.exists() and not download:
        raise ConfigError(f"--data-dir={data_dir!r} does not exist; give the folder that holds the datasets, or add "
                          "--download to fetch them into it")
    return str(path)


def storage_path(storage: str) -> str:
    """An absolute filesystem path (Tune and Train change the working directory). Object-store URIs are refused:
    the driver reads each trial's final artifacts from this folder to log them to MLflow."""
    if "://" in storage:
        raise ConfigError(f"--storage={storage!r}: URIs are not supported; give a filesystem path (on a cluster, a "
                          "shared mount every node sees at the same path)")
    return str(Path(storage).expanduser().resolve())


def gpus_per_worker(args: argparse.Namespace) -> float | None:
    if args.gpus_per_worker == "auto":
        return None
    try:
        gpus = float(args.gpus_per_worker)
    except ValueError:
        raise ConfigError(f"--gpus-per-worker={args.gpus_per_worker!r} is invalid: expected auto or a number >= 0") from None
    if gpus < 0:
        raise ConfigError(f"--gpus-per-worker={gpus} is invalid: expected auto or a number >= 0")
    return gpus


def cpus_per_worker(args: argparse.Namespace) -> float:
    """auto: on the local cluster share the CPUs so that --max-concurrent trials fit at once next to their trial
    functions' token CPU (with 1 CPU per worker on 2 cores, 2 x (1 + 0.01) > 2 and trials would run one by one);
    on a cluster, 1."""
    if args.cpus_per_worker != "auto":
        try:
            value = float(args.cpus_per_worker)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(f"--cpus-per-worker={args.cpus_per_worker!r} is invalid: expected auto or a number > 0")
        return value
    if args.ray_address is not None:
        return 1.0
    total = args.num_cpus or os.cpu_count() or 1
    share = (total - TRIAL_DRIVER_CPU * args.max_concurrent) / (args.max_concurrent * args.workers_per_trial)
    return max(0.01, min(1.0, math.floor(share * 100) / 100))


def pretrained_source(value: str | None) -> str | None:
    """A local --pretrained folder as an absolute path (trials run elsewhere); a hub id unchanged."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return str(path.resolve())
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        raise ConfigError(f"--pretrained={value!r}: no such folder; give a folder written by save_pretrained "
                          "(a UNet, a DDPMPipeline or a StableDiffusionPipeline) or a hub id such as google/ddpm-cifar10-32")
    return value


# ----------------------------------------------------------------------------------------------------------------
# The state file and --resume


def check_resume(settings: ExecutionSettings, resume: bool) -> None:
    """Refuse to overwrite an earlier run of the same name, and to resume one whose settings differ (every changed
    field named, with its saved and current value; ``RESUMABLE`` fields may change)."""
    kind, state_file = settings.KIND, settings.state_file
    if not resume:
        if state_file.is_file():
            raise ConfigError(f"a {kind} named {settings.name!r} already exists in {settings.storage}; pass --resume "
                              "to continue it, or --name NEW for a new one")
        return
    if not state_file.is_file():
        raise ConfigError(f"--resume: no earlier {kind} named {settings.name!r} in {settings.storage}; run without "
                          f"--resume, or pass the --name and --storage of the {kind} to resume")
    # A setting added after the run was started is missing from its file: it had that setting's default.
    defaults = {f.name: f.default for f in fields(settings) if f.default is not MISSING}
    saved = {**defaults, **json.loads(state_file.read_text())}
    current = asdict(settings)
    changed = [k for k in current if k not in settings.RESUMABLE and not _same(saved.get(k), current[k])]
    if changed:
        label = {"search_space_fingerprint": "search space content"}
        diffs = "; ".join(f"{label.get(k, k)}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(f"--resume: {kind} {settings.name!r} was started with different settings ({diffs}); "
                          f"resume with the original ones, or start a new {kind} with another --name")


def _same(saved: Any, current: Any) -> bool:
    """Equal as JSON would store them (tuples come back as lists)."""
    return json.loads(json.dumps(saved, default=str)) == json.loads(json.dumps(current, default=str))


def write_state(settings: ExecutionSettings, **extra: Any) -> ExecutionSettings:
    """The state file (``sweep.json`` / ``benchmark.json``): the settings ``--resume`` compares, plus ``extra``. The
    tracking URI is written redacted (``--resume`` takes it from the command line, never from this file); returns
    the settings as written, which is also what trials receive (they never log to MLflow themselves)."""
    from pudm_bench.tracking import redact

    redacted = replace(settings, mlflow_uri=redact(settings.mlflow_uri))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.state_file.write_text(json.dumps({**asdict(redacted), **extra}, indent=2))
    return redacted


def saved_state(settings: ExecutionSettings) -> dict[str, Any]:
    return json.loads(settings.state_file.read_text()) if settings.state_file.is_file() else {}
