"""``--scheduler moasha``: a Ray Tune ``TrialScheduler`` that stops trials at rungs by multi-objective successive
halving (the decisions: ``search.rungs.RungTable``).

Ray Tune's ASHA takes one metric, and Optuna's pruners refuse multi-objective studies, so the sweep brings its
own: a FIFO scheduler that, on a trial's rung report (``phase == "rung"``, sent by the Train worker after scoring a
small sample set at that step), records the trial's rung scores and returns STOP when it is not in the rung's top
``1/eta``. Baselines are never stopped (they are the references every trial is compared with) and are not ranked
with the searched trials. Tune does not checkpoint schedulers, so the table is written to ``<sweep>/moasha.json``
after every decision and read back on ``--resume``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from pudm_bench.orchestration.settings import SweepSettings
from pudm_bench.search.rungs import RUNG_PREFIX, RungTable
from pudm_bench.search.space import BASELINE_METHODS

STATE_FILE = "moasha.json"


class MultiObjectiveASHA(FIFOScheduler):
    """Stops a searched trial at a rung when ``table.decide`` says so; everything else runs as FIFO."""

    def __init__(self, table: RungTable, state_path: str | Path) -> None:
        super().__init__()
        self.table = table
        self.state_path = Path(state_path)
        self._load()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # ``Tuner.restore`` unpickles the scheduler as it was when the sweep started: the decisions made since are
        # in the state file.
        self.__dict__.update(state)
        self._load()

    def _load(self) -> None:
        # A new sweep's folder holds no table (an existing sweep name is refused without --resume).
        if self.state_path.is_file():
            self.table.load(json.loads(self.state_path.read_text()))

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if result.get("phase") != "rung" or is_baseline(trial.config):
            return TrialScheduler.CONTINUE
        scores = {k[len(RUNG_PREFIX):]: v for k, v in result.items() if k.startswith(RUNG_PREFIX)}
        go_on = self.table.decide(trial.trial_id, int(result["rung"]), scores, step=result.get("step"))
        self._save()
        return TrialScheduler.CONTINUE if go_on else TrialScheduler.STOP

    def _save(self) -> None:
        # Written whole and renamed: a driver killed mid-write leaves the previous table, never half of one.
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.table.to_dict(), indent=1, default=str))
        os.replace(tmp, self.state_path)

    def debug_string(self) -> str:
        stopped = sum(1 for rung in self.table.rungs.values() for e in rung.values() if e["decision"] == "stop")
        return f"MultiObjectiveASHA: eta {self.table.reduction_factor}, {stopped} trial(s) stopped at a rung"


def is_baseline(config: dict[str, Any]) -> bool:
    return config.get("method") in BASELINE_METHODS


def make_scheduler(settings: SweepSettings) -> MultiObjectiveASHA | None:
    """The sweep's Tune scheduler: None (Tune's FIFO) unless ``--scheduler moasha``; its rungs rank the sweep's
    objectives, and its constraints count (a trial that breaks one ranks after every feasible one)."""
    if settings.scheduler != "moasha":
        return None
    table = RungTable(objectives=tuple(settings.objective_directions), reduction_factor=settings.reduction_factor,
                      constraints=tuple(settings.parsed_constraints))
    return MultiObjectiveASHA(table, settings.run_dir / STATE_FILE)
