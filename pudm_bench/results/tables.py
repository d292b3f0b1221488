"""A benchmark's tables, from its runs: one row per run (``runs_frame``), mean +- sample std over seeds per split
and method (``summary_table``), the paper-style Markdown (Table 2 of arXiv:2503.03789: ``markdown_table``), the
diversity table, one sample grid per split and the summary metrics MLflow's compare view shows. No Ray, no
MLflow: orchestration builds them, tracking logs them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pudm_bench.search.budgets import budget_for, default_constraints
from pudm_bench.search.pareto import METRIC_DIRECTIONS, RATE, parse_constraint
from pudm_bench.search.suites import Plan

# Reported by runs that estimate beta (beta: auto) or filter U (method filter); "prior_true" is the split's truth.
PRIOR_COLUMNS = ("prior_true", "prior_estimate", "prior_std", "beta_used", "filter_sensitive_removed_share",
                 "filter_normal_removed_share")
# What the diversity table shows per split and method (diversity.py): normal-class coverage and precision/recall,
# and whether the samples look real at all (evaluate.realism_metrics).
DIVERSITY_COLUMNS = ("coverage_tv", "coverage_missing", "precision", "recall", "realistic_share",
                     "realistic_non_sensitive_rate")


def runs_frame(outcomes: list[dict[str, Any]], the_plan: Plan):
    """One row per training run: split, method label, seed, status, the two objectives and timings."""
    rows = []
    for outcome in outcomes:
        cell = the_plan.cells[outcome["cell"]]
        split = the_plan.splits[cell["params"]["split"]]
        result = outcome["result"]
        # The sweep's default constraints, applied to every run: a run that breaks one is flagged in the tables.
        constraints = [parse_constraint(text, METRIC_DIRECTIONS)
                       for text in default_constraints(split, budget_for(the_plan.budget, split))]
        rate, quality = result.get(RATE), result.get(split.quality_metric)
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rate, quality))
        ok = finite and outcome["status"] == "TERMINATED"
        rows.append({
            "split": split.name, "method": cell["params"]["label"], "seed": cell["params"]["seed"],
            "trial_id": outcome["trial_id"], "status": outcome["status"] if ok or outcome["error"] else "NO_RESULT",
            RATE: rate if ok else math.nan,
            "non_sensitive_rate_ci_low": result.get("non_sensitive_rate_ci_low"),
            "non_sensitive_rate_ci_high": result.get("non_sensitive_rate_ci_high"),
            "quality_metric": split.quality_metric, "quality": quality if ok else math.nan,
            "train_seconds": result.get("train_seconds"), "eval_seconds": result.get("eval_seconds"),
            "error": outcome["error"],
            **{key: result.get(key, math.nan) for key in PRIOR_COLUMNS},
            **{key: result.get(key, math.nan) if ok else math.nan for key in DIVERSITY_COLUMNS},
            "coverage_missing_classes": result.get("coverage_missing_classes") if ok else None,
            "coverage_tv_real_normal": result.get("coverage_tv_real_normal", math.nan) if ok else math.nan,
            "realistic_share_real": result.get("realistic_share_real", math.nan) if ok else math.nan,
            "fd_per_class": result.get("fd_per_class", math.nan) if ok else math.nan,
            "violations": ", ".join(str(c) for c in constraints if not c.holds(result.get(c.metric))) if ok else "",
        })
    order = {cell_id: i for i, cell_id in enumerate(the_plan.cells)}
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["_order"] = [order[f"{r.split}/{r.method}/seed{r.seed}"] for r in frame.itertuples()]
        frame = frame.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    return frame


TEXT_COLUMNS = ("status", "error", "violations", "coverage_missing_classes", "quality_metric")


def read_runs(paths, the_plan: Plan) -> pd.DataFrame:
    """``benchmark_runs.csv`` files of one suite's parts as one runs frame (the rows ``runs_frame`` wrote), in plan
    order; a (split, method, seed) in several files counts once: its finished row, else the later file's. Rows of cells the plan does
    not have (another suite, more seeds) are refused."""
    from pudm_bench.errors import ConfigError

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"--merge: {path} does not exist; give the benchmark_runs.csv of each part")
        frames.append(pd.read_csv(path, keep_default_na=False))  # "" stays "" in text columns (no violations)
    runs = pd.concat(frames, ignore_index=True)
    for column in runs.columns:  # numbers as numbers ("" from a missing value is NaN), text as text ("" kept)
        if column not in TEXT_COLUMNS:
            try:
                runs[column] = pd.to_numeric(runs[column].replace("", math.nan))
            except (TypeError, ValueError):
                pass
    # A finished run wins over an unfinished one of the same cell (a part stopped early lists its cells as
    # NO_RESULT); among finished ones, the later file's.
    runs = (runs.assign(_done=runs[RATE].notna()).sort_values("_done", kind="stable")
            .drop_duplicates(["split", "method", "seed"], keep="last").drop(columns="_done"))
    order = {cell_id: i for i, cell_id in enumerate(the_plan.cells)}
    keys = [f"{r.split}/{r.method}/seed{int(r.seed)}" for r in runs.itertuples()]
    unknown = [k for k in keys if k not in order]
    if unknown:
        raise ConfigError(f"--merge: runs {', '.join(unknown[:3])} are not in suite {the_plan.suite.name!r} with "
                          "these seeds; pass the suite and a --seeds that covers every part")
    # A planned run in no part is listed as not run, so the tables say (k/n) of the whole plan.
    missing = [dict(split=c["params"]["split"], method=c["params"]["label"], seed=c["params"]["seed"],
                    status="NOT_RUN", **{RATE: math.nan}) for cell_id, c in the_plan.cells.items() if cell_id not in keys]
    runs = pd.concat([runs, pd.DataFrame(missing)], ignore_index=True) if missing else runs
    keys = [f"{r.split}/{r.method}/seed{int(r.seed)}" for r in runs.itertuples()]
    runs = runs.assign(_order=[order[k] for k in keys]).sort_values("_order").drop(columns="_order")
    for column in TEXT_COLUMNS:
        if column in runs:
            runs[column] = runs[column].fillna("")
    return runs.reset_index(drop=True)


def summary_table(runs, the_plan: Plan):
    """Long form: one row per (split, method) with n (finished runs), planned runs, mean and std of both objectives."""
    rows = []
    for split in the_plan.splits.values():
        for method in the_plan.suite.methods:
            if any(s == split.name and m == method.label for s, m, _ in the_plan.skipped):
                continue
            mine = runs[(runs.split == split.name) & (runs.method == method.label)] if len(runs) else runs
            done = mine[mine[RATE].notna()] if len(mine) else mine
            rows.append({
                "split": split.name, "method": method.label, "n": len(done), "planned": len(mine),
                "rate_mean": done[RATE].mean() if len(done) else math.nan,
                "rate_std": done[RATE].std(ddof=1) if len(done) > 1 else math.nan,
                "quality_metric": split.quality_metric,
                "quality_mean": done["quality"].mean() if len(done) else math.nan,
                "quality_std": done["quality"].std(ddof=1) if len(done) > 1 else math.nan,
                # Mean over finished runs of what the prior estimator and the filter did (NaN for other methods).
                **{f"{key}_mean": done[key].mean() if len(done) and key in done else math.nan
                   for key in PRIOR_COLUMNS},
                **{f"{key}_{stat}": (getattr(done[key], stat)(**({"ddof": 1} if stat == "std" else {}))
                                     if len(done) > (stat == "std") and key in done else math.nan)
                   for key in DIVERSITY_COLUMNS for stat in ("mean", "std")},
                # Which normal classes were under half their share, in how many of the runs: "four (2/3), six (1/3)".
                "coverage_missing_classes": _missing_counts(done),
                "coverage_tv_real_normal": done["coverage_tv_real_normal"].mean()
                if len(done) and "coverage_tv_real_normal" in done else math.nan,
                "realistic_share_real": done["realistic_share_real"].mean()
                if len(done) and "realistic_share_real" in done else math.nan,
                # Runs that break a default constraint (a dropped normal class, samples mostly unrealistic).
                "flagged": int((done["violations"] != "").sum()) if len(done) and "violations" in done else 0,
            })
    return pd.DataFrame(rows)


def _missing_counts(done) -> str:
    if not len(done) or "coverage_missing_classes" not in done:
        return ""
    counts: dict[str, int] = {}
    for text in done["coverage_missing_classes"].dropna():
        for name in filter(None, (part.strip() for part in str(text).split(","))):
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({n}/{len(done)})" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _mean_std(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "—"  # no finished run (not run yet, stopped, or failed: the runs list below says which)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def markdown_table(table, the_plan: Plan) -> str:
    """The paper's layout: one row per method, per split a column pair (non-sensitive rate up, quality down)."""
    splits = list(the_plan.splits.values())
    realistic = "realistic_non_sensitive_rate_mean" in table and table["realistic_non_sensitive_rate_mean"].notna().any()
    header = ["method"]
    for split in splits:
        header += [f"{split.name} non-sensitive ↑"] + ([f"{split.name} realistic non-sensitive ↑"] if realistic else [])
        header += [f"{split.name} {split.quality_metric} ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in the_plan.suite.methods:
        cells = [method.label]
        for split in splits:
            row = table[(table.split == split.name) & (table.method == method.label)]
            if not len(row):
                cells += ["—"] * (3 if realistic else 2)
                continue
            r = row.iloc[0]
            note = f" ({int(r.n)}/{int(r.planned)})" if r.n != r.planned else ""
            flag = f" ⚑{int(r.flagged)}/{int(r.n)}" if getattr(r, "flagged", 0) else ""
            cells.append(_mean_std(r.rate_mean, r.rate_std, 3) + note + flag)
            if realistic:
                cells.append(_mean_std(r.realistic_non_sensitive_rate_mean, r.realistic_non_sensitive_rate_std, 3))
            cells.append(_mean_std(r.quality_mean, r.quality_std, 3) + note)
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max((int(n) for n in table.planned), default=0) if len(table) else 0
    notes = [f"Mean ± sample standard deviation over {seeds} training seed(s); (k/n): only k of n runs finished; —: none."]
    if len(table) and table["flagged"].sum():
        notes.append("⚑k/n: k of the n runs break a default constraint of the sweep (a normal class under half its "
                     "share, or samples mostly off the real-image manifold: docs/metrics.md); a sweep keeps such "
                     "trials off its Pareto front.")
    if realistic:
        notes.append("Realistic non-sensitive: the share of samples that are both called normal and inside the k-NN "
                     "manifold of real test images (per-class referee features).")
    if the_plan.skipped:
        notes.append("—: not run (" + "; ".join(sorted({f"{m} on {s}: {why}" for s, m, why in the_plan.skipped})) + ").")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + diversity_table(table, the_plan)


def diversity_table(table, the_plan: Plan) -> str:
    """Per split: one row per method with the normal-class coverage (TV, classes under half their share) and
    precision/recall, so that a rate won by dropping normal classes shows, and the TV that real normal test images
    get (the floor). Empty when no run measured them."""
    if not len(table) or "precision_mean" not in table or table["precision_mean"].isna().all():
        return ""
    out = ["", "Normal-class coverage (TV ↓, classes under half their share: in how many runs) and precision ↑ / "
               "recall ↑ (Kynkäänniemi et al., 2019; per-class referee features):", ""]
    for split in the_plan.splits.values():
        rows = table[table.split == split.name]
        if not len(rows) or rows["precision_mean"].isna().all():
            continue
        out += [f"**{split.name}**", "", "| method | coverage TV ↓ | under half their share | precision ↑ | recall ↑ | "
                                         "realistic share ↑ |", "|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            tv = _mean_std(r.coverage_tv_mean, r.coverage_tv_std, 3) if math.isfinite(r.coverage_tv_mean) else "—"
            # "none" only where some run of the method was scored: a method with no finished run has no classes to list.
            missing = r.coverage_missing_classes or ("none" if math.isfinite(r.precision_mean) else "—")
            out.append(f"| {r.method} | {tv} | {missing} | "
                       f"{_mean_std(r.precision_mean, r.precision_std, 3)} | {_mean_std(r.recall_mean, r.recall_std, 3)} | "
                       f"{_mean_std(r.realistic_share_mean, r.realistic_share_std, 3)} |")
        floor = rows["coverage_tv_real_normal"].dropna()
        real = rows["realistic_share_real"].dropna() if "realistic_share_real" in rows else floor[:0]
        if len(floor) or len(real):
            out += ["", "Real held-out images, scored the same way: "
                    + (f"coverage TV {floor.iloc[0]:.3f} (the floor; the reference is the class mix of U's normal "
                       "images)" if len(floor) else "")
                    + ("; " if len(floor) and len(real) else "")
                    + (f"realistic share {real.iloc[0]:.3f} (U's images; the ceiling)" if len(real) else "") + "."]
        out.append("")
    return "\n".join(out)



def write_sample_grids(runs, run_dir: Path) -> list[Path]:
    """One figure per split, one panel per method: the samples of its lowest finished seed (the first 64 of the
    images that were scored), titled with that run's scores. Read from each run's final checkpoint
    (``<run_dir>/train/trial-<id>/final/samples.png``); written to ``<run_dir>/grids/<split>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    written = []
    done = runs[runs[RATE].notna()] if len(runs) else runs
    for split, rows in done.groupby("split", sort=False):
        chosen = rows.sort_values("seed").groupby("method", sort=False).head(1)
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.6), squeeze=False)
        for ax, row in zip(axes[0], chosen.itertuples()):
            grid = run_dir / "train" / f"trial-{row.trial_id}" / "final" / "samples.png"
            if grid.is_file():
                ax.imshow(Image.open(grid), cmap="gray")
            ax.set_title(f"{row.method} (seed {row.seed})\nrate {getattr(row, RATE):.3f}, "
                         f"{row.quality_metric} {row.quality:.3g}", fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{split}: samples per method", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the suptitle above the panel titles
        path = run_dir / "grids" / f"{split}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def table_metrics(table) -> dict[str, float]:
    """Summary metrics for MLflow's compare view: ``<split>/<method>/<objective>_mean|_std``."""
    out = {}
    for r in table.itertuples():
        for name, value in (("non_sensitive_rate_mean", r.rate_mean), ("non_sensitive_rate_std", r.rate_std),
                            (f"{r.quality_metric}_mean", r.quality_mean), (f"{r.quality_metric}_std", r.quality_std),
                            *((f"{k}_{stat}", getattr(r, f"{k}_{stat}", math.nan))
                              for k in DIVERSITY_COLUMNS for stat in ("mean", "std"))):
            out[f"{r.split}/{r.method}/{name}"] = value
    return out
