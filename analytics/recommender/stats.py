"""How sure the recommender is: Wilson score intervals on agreement rates.

Agreement between a candidate's answer and the incumbent's is a yes/no outcome per
shadow sample. The Wilson interval (Wilson 1927) keeps its coverage at the small
samples and rates near 1 that routing sees, where the normal approximation claims a
certainty it does not have (at 30 of 30 agreements it gives [1, 1]).
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_score(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (1.96 at 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval of a rate from ``successes`` out of ``n``.

    ``(0.0, 1.0)`` when there is no sample (nothing is known)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (0.0, 1.0)
    z = z_score(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator))


def samples_needed(
    rate: float, threshold: float, confidence: float = 0.95, limit: int = 100_000
) -> int | None:
    """The fewest samples at which an observed ``rate`` would put the Wilson lower bound
    at ``threshold`` or above; None when it never would (``rate`` at or below it) or only
    beyond ``limit``."""
    if rate <= threshold:
        return None
    low, high = 1, limit
    if wilson_interval(round(rate * high), high, confidence)[0] < threshold:
        return None
    while low < high:
        mid = (low + high) // 2
        if wilson_interval(round(rate * mid), mid, confidence)[0] >= threshold:
            high = mid
        else:
            low = mid + 1
    return low


def count_interval(count: int, confidence: float = 0.95) -> tuple[float, float]:
    """An approximate interval for the expected value of a Poisson ``count`` (the square-root
    transform: ``(sqrt(count) -+ z/2)^2``), used to bound request volume."""
    z = z_score(confidence)
    root = math.sqrt(count)
    return (max(0.0, root - z / 2) ** 2, (root + z / 2) ** 2)
