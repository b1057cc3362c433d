"""Whether a cheaper model is no worse, however often the answer is looked at.

The recommender lets a cheaper *candidate* model replace the *incumbent* on a route when
its graded quality (scores in [0, 1]) is not worse by more than ``max_quality_loss``
(non-inferiority). The evidence grows while the user watches: every refresh of the report
or the dashboard is another look. A fixed-sample bound (a t or z interval) holds its error
rate only for one look at a sample size chosen in advance; checked after every batch, it
is eventually crossed by chance, so the false-recommend rate climbs well above its stated
level (with 50 looks at a 5% one-sided z bound, to about a third of the routes at the
margin in ``tests/test_sequential.py``).

This module gives a *confidence sequence* instead: a lower bound ``L_t`` with the
time-uniform guarantee ``P(there is a t with mean < L_t) <= alpha``, so a decision taken at
whatever look, however chosen, keeps its error rate. It is the predictable plug-in
empirical-Bernstein confidence sequence (PrPl-EB) of Waudby-Smith and Ramdas, "Estimating
means of bounded random variables by betting", JRSS-B 2023 (Theorem 2, one-sided with
``log(1/alpha)``), for observations ``X_i`` in [0, 1]:

- ``mu_i = (1/2 + sum_{j<=i} X_j) / (i + 1)``,
  ``s2_i = (1/4 + sum_{j<=i} (X_j - mu_j)^2) / (i + 1)``, with ``mu_0 = 1/2``, ``s2_0 = 1/4``;
- the bet ``lambda_i = min(sqrt(2 log(1/alpha) / (s2_{i-1} i log(1 + i))), 1/2)`` uses only
  the data before ``i`` (predictable), which is what makes the bound valid;
- ``v_i = 4 (X_i - mu_{i-1})^2`` and ``psi_E(l) = (-log(1 - l) - l) / 4``;
- ``L_t = (sum lambda_i X_i - log(1/alpha) - sum v_i psi_E(lambda_i)) / sum lambda_i``.

Every ``L_t`` holds at once, so their running maximum (the intersection of the sequence)
holds too; that is what is reported, clipped to [0, 1]. The bound adapts to the variance
(empirical Bernstein), so a route where the two models mostly tie needs far fewer samples
than the range alone would suggest.

The bounds are Polars expressions over a column in the frame's row order (the order the
evidence arrived), so they work per route inside ``group_by().agg(...)`` or ``.over(...)``
like the rest of ``analytics``; each keeps the name of the column it is built on. The
column must hold no nulls (drop them first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

__all__ = [
    "DEFAULT_MAX_QUALITY_LOSS",
    "non_inferior",
    "paired_lower_bound",
    "running_lower_bound",
    "running_upper_bound",
    "two_arm_lower_bound",
]

DEFAULT_MAX_QUALITY_LOSS = 0.02
"""How much lower the candidate's mean quality score may be than the incumbent's."""

_MAX_BET = 0.5
"""The cap ``c`` on each bet ``lambda_i`` (the paper's suggested 1/2)."""


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    return math.log(1 / alpha)


def running_lower_bound(x: pl.Expr, alpha: float) -> pl.Expr:
    """The PrPl-EB lower confidence sequence for the mean of ``x`` (values in [0, 1]),
    one value a row: row ``t`` is the bound after the first ``t`` rows (a running maximum,
    in [0, 1]). Take ``.last()`` for the bound on all the evidence."""
    log_term = _check_alpha(alpha)
    x = x.cast(pl.Float64)
    n = x.cum_count().cast(pl.Float64)  # 1, 2, ... (the column holds no nulls)
    mean = (0.5 + x.cum_sum()) / (n + 1)
    variance = (0.25 + ((x - mean) ** 2).cum_sum()) / (n + 1)
    previous_mean = mean.shift(1, fill_value=0.5)
    previous_variance = variance.shift(1, fill_value=0.25)
    bet = pl.min_horizontal((2 * log_term / (previous_variance * n * (1 + n).log())).sqrt(), pl.lit(_MAX_BET))
    v = 4 * (x - previous_mean) ** 2
    psi = (-(1 - bet).log() - bet) / 4
    bound = ((bet * x).cum_sum() - log_term - (v * psi).cum_sum()) / bet.cum_sum()
    return bound.cum_max().clip(0.0, 1.0).name.keep()


def running_upper_bound(x: pl.Expr, alpha: float) -> pl.Expr:
    """The matching upper confidence sequence for the mean of ``x`` in [0, 1] (a running
    minimum): one minus the lower bound of ``1 - x``."""
    return (1 - running_lower_bound(1 - x, alpha)).name.keep()


def paired_lower_bound(d: pl.Expr, alpha: float) -> pl.Expr:
    """The lower confidence sequence for the mean of paired differences ``d`` in [-1, 1]
    (candidate score minus incumbent score on the same prompt), on the difference scale
    (in [-1, 1]), one value a row; take ``.last()`` for the bound on all the evidence."""
    return (2 * running_lower_bound((d + 1) / 2, alpha) - 1).name.keep()


def non_inferior(d: pl.Expr, alpha: float, max_quality_loss: float = DEFAULT_MAX_QUALITY_LOSS) -> pl.Expr:
    """True once the paired lower bound is above ``-max_quality_loss`` (recommend the
    candidate), one value a row; with ``.last()``, the decision on all the evidence."""
    return (paired_lower_bound(d, alpha) > -max_quality_loss).name.keep()


def _final(values: pl.Series, bound: pl.Expr, empty: float) -> float:
    """The last value of ``bound`` over ``values``; ``empty`` when there are none."""
    if values.len() == 0:
        return empty
    result = pl.DataFrame({"x": values.cast(pl.Float64)}).select(bound.last()).item()
    return float(result)


def two_arm_lower_bound(
    candidate: pl.Series | Iterable[float],
    control: pl.Series | Iterable[float],
    alpha: float,
) -> float:
    """A lower confidence bound for ``mean(candidate) - mean(control)`` from two
    independent arms of scores in [0, 1] (canary feedback), in [-1, 1].

    A union bound: the candidate's lower bound at ``alpha / 2`` minus the control's upper
    bound at ``alpha / 2``. Each side holds at every sample size of its arm at once, so the
    difference holds at every pair of sizes, whatever order the arms grow in and however
    often it is looked at. An empty arm knows nothing (its mean is somewhere in [0, 1])."""
    _check_alpha(alpha)
    candidate_values = pl.Series(candidate, dtype=pl.Float64).drop_nulls()
    control_values = pl.Series(control, dtype=pl.Float64).drop_nulls()
    column = pl.col("x")
    low = _final(candidate_values, running_lower_bound(column, alpha / 2), empty=0.0)
    high = _final(control_values, running_upper_bound(column, alpha / 2), empty=1.0)
    return low - high
