"""A pruner for intermediate scorecards on workload prefixes.

Optuna's MedianPruner prunes any trial below the median at a step, which on a lightly loaded
prefix prunes near-ties by noise (every decent policy scores alike on the first quarter of a
trace; they differ where the load peaks). ``MarginPruner`` prunes only a trial that is worse
than the ``percentile`` of the finished trials at the same step by more than ``margin``
(relative), so only clearly bad policies stop early.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState


class MarginPruner(BasePruner):
    def __init__(self, percentile: float = 50.0, margin: float = 0.1, n_startup_trials: int = 5) -> None:
        if not 0 <= percentile <= 100 or margin < 0 or n_startup_trials < 0:
            raise ValueError("MarginPruner: percentile in 0..100, margin >= 0, n_startup_trials >= 0")
        self.percentile, self.margin, self.n_startup_trials = percentile, margin, n_startup_trials

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if step in t.intermediate_values]
        others = [v for v in others if math.isfinite(v)]
        if len(others) < self.n_startup_trials or not math.isfinite(value):
            return not math.isfinite(value) and len(others) >= self.n_startup_trials
        maximize = study.direction == StudyDirection.MAXIMIZE
        # the reference is the percentile of the *better* side: 50 = median
        ref = float(np.percentile(others, 100 - self.percentile if maximize else self.percentile))
        slack = self.margin * abs(ref)
        return value < ref - slack if maximize else value > ref + slack
