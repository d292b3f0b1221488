"""``python -m pudm_bench.report``: a sweep's Pareto front and baselines, read back from MLflow.

    python -m pudm_bench.report                       # the latest sweep in ./mlflow.db
    python -m pudm_bench.report --list                # all sweeps, newest first
    python -m pudm_bench.report --sweep RUN_ID        # one sweep
    python -m pudm_bench.report --compare RUN_A RUN_B # two fronts side by side, hypervolumes on one reference

The front is that of the searched trials (baselines are listed apart, with the same budget); the hypervolume is
the area the front dominates up to a reference point (``pareto.hypervolume_2d``). One sweep uses the reference
logged with it; a comparison uses one reference for both, ``pareto.default_reference`` of their trials together,
since hypervolumes against different references cannot be compared.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import pandas as pd

from pudm_bench.errors import ConfigError, unknown_name
from pudm_bench.search.pareto import METRIC_DIRECTIONS, QUALITY, RATE, default_reference, parse_constraint, summarize
from pudm_bench.tracking.reader import list_sweeps, load_sweep
from pudm_bench.tracking.uris import redact

TABLE_COLUMNS = ["trial_id", "method", "beta", "correction", "lr", "status", RATE, "non_sensitive_rate_ci_low",
                 "non_sensitive_rate_ci_high", QUALITY]
COMPARE_COLUMNS = ["trial_id", "method", "beta", "lr", RATE, QUALITY]


DIVERSITY_SHOWN = ["coverage_tv", "coverage_missing_classes", "precision", "recall"]


def _columns(trials: pd.DataFrame, base: list[str], extra: Sequence[tuple[str, str]]) -> list[str]:
    """``base`` plus the further objectives and the diversity metrics the trials have."""
    added = [m for m, _ in extra] + DIVERSITY_SHOWN
    return base + [c for c in dict.fromkeys(added) if c in trials.columns and c not in base
                   and trials[c].notna().any() and (trials[c] != "").any()]


def _table(frame: pd.DataFrame, columns: list[str], quality: str, empty: str) -> str:
    if frame.empty:
        return empty
    shown = frame[columns].rename(columns={QUALITY: quality})
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False)


def _reference_text(reference: tuple[float, float], quality: str) -> str:
    return f"{RATE}={reference[0]:.3g}, {quality}={reference[1]:.4g}"


def pick_sweep(uri: str, experiment: str | None, run_id: str | None) -> str:
    """A sweep's parent run id: ``run_id`` as given (a run id, or a sweep name looked up in the store), else the
    latest sweep."""
    if run_id and re.fullmatch(r"[0-9a-f]{32}", run_id):
        return run_id
    sweeps = list_sweeps(uri, experiment)
    if run_id:
        named = sweeps[sweeps["sweep_name"] == run_id]
        if named.empty:
            raise unknown_name("sweep", run_id, sorted(set(sweeps["sweep_name"])) or ["(no sweeps)"])
        if named["experiment"].nunique() > 1:
            raise ConfigError(f"sweep name {run_id!r} is used in experiments {', '.join(sorted(set(named['experiment'])))}; "
                              "pass --experiment, or the parent run id")
        return str(named.iloc[0]["run_id"])
    if sweeps.empty:
        where = f" (experiment {experiment!r})" if experiment else ""
        raise ConfigError(f"no sweeps in {redact(uri)}{where}: run python -m pudm_bench.sweep first, or pass "
                          "--mlflow-uri")
    return str(sweeps.iloc[0]["run_id"])


def report_sweep(uri: str, run_id: str) -> str:
    info, trials = load_sweep(uri, run_id)
    quality, summary = info["quality"], info["summary"]
    reference = summary.reference
    ref_note = ("logged with the sweep" if info["reference"] is not None and all(map(math.isfinite, info["reference"]))
                else "0 and 1.1 x the worst quality of its trials")
    search = trials[trials["role"] != "baseline"]
    extra = info.get("objectives") or []
    columns = _columns(trials, TABLE_COLUMNS, extra)
    directions = ", ".join([f"{RATE} up", f"{quality} down"] + [f"{m} {'up' if d == 'max' else 'down'}" for m, d in extra])
    constraints = info.get("constraints") or []
    lines = [
        f"Sweep {info['sweep_name']!r} ({info['status']}), started {info['start_time']:%Y-%m-%d %H:%M} UTC",
        f"MLflow: {info['tracking_uri']}  experiment {info['experiment']!r}  run {info['run_id']}",
        "",
        f"Pareto front ({directions}) of {len(search)} searched trials"
        + (f", constraints {', '.join(constraints)}:" if constraints else ":"),
        _table(summary.front, columns, quality, "  (empty: no searched trial finished)"),
    ]
    baselines = trials[trials["role"] == "baseline"]
    if len(baselines):
        lines += ["", "Baselines (same budget):", _table(baselines, columns, quality, "")]
    infeasible = trials[~trials["feasible"].astype(bool) & (trials["status"] == "FINISHED")]
    if len(infeasible):
        lines += ["", "Trials that break a constraint (kept, not on the front):",
                  _table(infeasible, columns + ["violations"], quality, "")]
    failed = trials[trials["status"] != "FINISHED"]
    if len(failed):
        lines += ["", "Trials without a result:", failed[["trial_id", "method", "status", "error"]].to_string(index=False)]
    lines += ["", f"Hypervolume of the searched front: {summary.hypervolume:.4g} (reference: {_reference_text(reference, quality)}; "
                  f"{ref_note})"]
    return "\n".join(lines)


def _side_by_side(left: str, right: str, gap: str = "   |   ") -> str:
    a, b = left.splitlines() or [""], right.splitlines() or [""]
    width = max(len(line) for line in a)
    rows = max(len(a), len(b))
    a, b = a + [""] * (rows - len(a)), b + [""] * (rows - len(b))
    return "\n".join(f"{x:<{width}}{gap}{y}".rstrip() for x, y in zip(a, b))


def report_compare(uri: str, run_a: str, run_b: str) -> str:
    (info_a, trials_a), (info_b, trials_b) = load_sweep(uri, run_a), load_sweep(uri, run_b)
    quality = info_a["quality"]
    if info_b["quality"] != quality:
        raise ConfigError(f"sweeps {run_a} and {run_b} score quality differently ({quality} vs {info_b['quality']}); "
                          "compare sweeps with the same quality metric")
    # Over every finished trial, constraints or not: as each sweep's own reference is taken before its constraints.
    both = pd.concat([trials_a, trials_b], ignore_index=True)
    reference = default_reference(both.assign(excluded=both["status"] != "FINISHED"))
    lines = [f"MLflow: {redact(uri)}"]
    split_a, split_b = info_a["tags"].get("pudm.split"), info_b["tags"].get("pudm.split")
    if split_a != split_b:
        lines.append(f"note: the sweeps are on different splits ({split_a} vs {split_b})")
    blocks, hypervolumes = {}, {}
    for label, info, trials in (("A", info_a, trials_a), ("B", info_b, trials_b)):
        head = (f"{label}: {info['sweep_name']!r}  experiment {info['experiment']!r}  run {info['run_id']}\n"
                f"front of {int((trials['role'] != 'baseline').sum())} searched trials:\n")
        front = summarize(trials, [parse_constraint(c, METRIC_DIRECTIONS) for c in info["constraints"]],
                          info.get("objectives") or [], reference=reference)
        hypervolumes[label] = front.hypervolume
        front = front.front
        blocks[label] = (head + _table(front, COMPARE_COLUMNS, quality, "  (empty)"),
                         _table(trials[trials["role"] == "baseline"], COMPARE_COLUMNS, quality, "  (none)"))
    lines += ["", f"Pareto fronts ({RATE} up, {quality} down):", _side_by_side(blocks["A"][0], blocks["B"][0])]
    if len(trials_a[trials_a["role"] == "baseline"]) or len(trials_b[trials_b["role"] == "baseline"]):
        lines += ["", "Baselines:", _side_by_side(blocks["A"][1], blocks["B"][1])]
    hv_a, hv_b = hypervolumes["A"], hypervolumes["B"]
    lines += ["", f"Hypervolume against a common reference ({_reference_text(reference, quality)}: rate 0 and 1.1 x "
                  f"the worst {quality} of both sweeps' trials):",
              f"  A {info_a['run_id']}: {hv_a:.4g}", f"  B {info_b['run_id']}: {hv_b:.4g}"]
    return "\n".join(lines)


def report_list(uri: str, experiment: str | None) -> str:
    sweeps = list_sweeps(uri, experiment)
    if sweeps.empty:
        return f"no sweeps in {redact(uri)}"
    shown = sweeps.assign(start_time=sweeps["start_time"].dt.strftime("%Y-%m-%d %H:%M"))
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return f"MLflow: {redact(uri)}\n" + shown.to_string(index=False)
