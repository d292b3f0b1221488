"""Everything checked and prepared before Ray starts, in one place for the sweep and the benchmark: the resume
check, the storage and tracking store (``preflight``), then the data, referees and FID statistics every trial's
scoring needs (``prepare_scoring``), one ``[prepare]`` line per step."""

from __future__ import annotations

from pathlib import Path

from pudm_bench import tracking
from pudm_bench.data.build import build_split
from pudm_bench.data.splits import SplitSpec
from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.settings import ExecutionSettings, check_resume
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.scoring.referee import check_referee, get_class_referee, get_referee


def say(message: str) -> None:
    """One line of the driver's preparation (before Ray starts): what it is doing and what it found."""
    print(f"[prepare] {message}", flush=True)


def preflight(settings: ExecutionSettings, resume: bool) -> None:
    """The checks every run makes before any work (data, referees and Ray come after): the resume check (an
    existing run is not overwritten; a resumed one has the same settings), the storage is a folder that can be
    created, and the tracking store is reachable."""
    check_resume(settings, resume)
    storage = Path(settings.storage)
    blocker = next((p for p in (storage, *storage.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"--storage={settings.storage!r}: {blocker} is a file, not a folder; give a folder path")
    tracking.check_tracking_reachable(settings.mlflow_uri)


def make_run_dir(run_dir: Path, storage: str) -> None:
    """The run's folder under --storage, made once every input has been checked: the first thing a run writes."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--storage={storage!r}: cannot create {run_dir} ({exc.strerror or exc}); give a folder "
                          "you can write") from None


def prepare_scoring(split: SplitSpec, evaluation: EvalConfig, settings: ExecutionSettings) -> str:
    """What every trial's scoring needs, made once in the driver before Ray starts, one line per step: the split
    (data present and readable, counts), the run's folder, the referee (refused below the floor), the per-class
    referee, the FID weights and reference statistics when Inception is used. Returns the split's fingerprint."""
    data_dir, download = settings.data_dir, settings.download
    built = build_split(split, data_dir=data_dir, download=download)
    say(f"split {split.name}: U {len(built.unlabeled):,} images ({int(built.unlabeled_is_sensitive.sum()):,} "
        f"sensitive), S {len(built.labeled_sensitive):,}, normal test {len(built.normal_test):,}, fingerprint "
        f"{built.fingerprint}")
    inception = evaluation.fid == "on" or evaluation.quality_metric == "fid"
    if inception:  # missing weights: refused before a referee is trained (and cached)
        from pudm_bench.scoring.fid import resolve_fid_weights, statistics_cached

        weights, provenance = resolve_fid_weights(evaluation.fid_weights)
    make_run_dir(settings.run_dir, settings.storage)  # every input checked: the first write
    referee = get_referee(split, data_dir=data_dir, download=download, cache_dir=evaluation.cache_dir,
                          path=evaluation.referee_path, epochs=evaluation.referee_epochs,
                          log=lambda line: say(f"{split.name} referee (normal vs sensitive): {line}"))
    check_referee(referee, evaluation.referee_floor)
    if evaluation.diversity != "off":
        get_class_referee(split, data_dir=data_dir, download=download, cache_dir=evaluation.cache_dir,
                          epochs=evaluation.referee_epochs,
                          log=lambda line: say(f"{split.name} per-class referee: {line}"))
    if inception:
        key = f"{split.name}-{built.fingerprint}-normal_test"
        cached = statistics_cached(key, weights, evaluation.fid_dims, evaluation.cache_dir)
        say(f"{split.name} FID: Inception weights {provenance}; reference statistics "
            + ("cached" if cached else f"computed by the first trial over {len(built.normal_test):,} normal test "
                                       "images, then cached"))
    return built.fingerprint
