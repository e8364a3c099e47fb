"""Learning-rate intelligence: find a good rate before training, and tell a bad one during it.

* :func:`range_test` sweeps the learning rate upward over a short run, several times over
  different batch orders, and suggests a rate from the loss-versus-rate curve (Smith 2017);
  it leaves the model, the random state and the caller's optimizer exactly as it found them.
* :class:`SafeStep` guards each step against NaN and loss spikes: raise, skip, back off
  (roll back to a snapshot and cut the rate) or stop, keeping schedules and state consistent.
* :func:`choose_lr` is ``lr="auto"``: a short range test, or a learning-rate-free method.
* :class:`RegimeMonitor` watches a running optimization (loss, gradient norm, update size)
  and classifies each window of steps as ``too_large``, ``too_small`` or ``good``, with the
  evidence and a concrete piece of advice.
* :func:`compare` runs one problem with several optimizers or rates from one start and draws
  the curves side by side (and the paths over contours in 2-D); :func:`three_regimes` is the
  picture of a rate too small, a good one and one too large.

Example:
    >>> result = steepest.lr.range_test(model, (X, y), steepest.SGD)
    >>> print(steepest.lr.lr_find_summary(result))
    >>> monitor = steepest.lr.RegimeMonitor(window=20)
"""

from steepest.lr.auto import POLICIES, LRChoice, choose_lr, is_adam_family, stable_limit
from steepest.lr.compare import Comparison, RunCurve, RunSpec, compare, three_regimes
from steepest.lr.diagnosis import (
    REGIMES,
    Diagnosis,
    RegimeMonitor,
    UpdateTracker,
    measure_update_ratio,
)
from steepest.lr.range_test import RULES, RangeTestResult, lr_find_summary, range_test
from steepest.lr.safety import ACTIONS, SafeStep, Verdict

__all__ = [
    "ACTIONS",
    "POLICIES",
    "LRChoice",
    "SafeStep",
    "Verdict",
    "choose_lr",
    "stable_limit",
    "is_adam_family",
    "Comparison",
    "RunCurve",
    "RunSpec",
    "compare",
    "three_regimes",
    "REGIMES",
    "RULES",
    "Diagnosis",
    "RangeTestResult",
    "RegimeMonitor",
    "UpdateTracker",
    "lr_find_summary",
    "measure_update_ratio",
    "range_test",
]
