"""Quantiles of a stream of durations in bounded memory: a log-bucketed histogram.

This is the bucket scheme of DDSketch (Masson, Rim and Lee, VLDB 2019). With a
relative accuracy ``a`` (default 0.01) and ``gamma = (1 + a) / (1 - a)``, a
positive value ``x`` is counted in bucket ``i = ceil(log_gamma(x))``, which
covers ``(gamma**(i-1), gamma**i]``. A bucket is reported as
``2 * gamma**i / (gamma + 1)``, which is within ``a`` of every value in it, so

    |estimate - exact| <= a * exact

for every quantile, where *exact* is the value at rank ``floor(q * (n - 1))`` of
the sorted values (the "lower" quantile). Zero is counted apart and reported
exactly; estimates are clamped to the exact minimum and maximum, which only
brings them closer.

Memory does not grow with the number of values, only with their range: one
counter per band of about 2% that holds a value. Everything between 1 µs and
one day (in milliseconds: 1e-3 to 8.64e7) fits in at most 1,260 counters; the
whole range of a float in about 72,700. Two sketches of the same accuracy
merge exactly by adding their counters.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_RELATIVE_ACCURACY", "LogHistogram"]

DEFAULT_RELATIVE_ACCURACY = 0.01
"""Quantile estimates are within 1 % of the exact value."""


class LogHistogram:
    """A mergeable quantile sketch of non-negative values (see the module docstring).

    >>> sketch = LogHistogram()
    >>> for value in (1.0, 2.0, 3.0, 4.0, 100.0):
    ...     sketch.add(value)
    >>> round(sketch.quantile(0.5), 2)  # exact: 3.0
    2.97
    >>> sketch.count, sketch.max
    (5, 100.0)
    """

    __slots__ = ("_buckets", "_gamma", "_log_gamma", "_zeros", "accuracy", "count", "max", "min")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be between 0 and 1 (exclusive)")
        self.accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one value; ValueError if it is negative, NaN or infinite."""
        if not (math.isfinite(value) and value >= 0):
            raise ValueError("LogHistogram takes finite, non-negative values only")
        if value == 0:
            self._zeros += 1
        else:
            index = math.ceil(math.log(value) / self._log_gamma)
            self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def merge(self, other: LogHistogram) -> None:
        """Add every value counted in ``other`` (same accuracy required)."""
        if other.accuracy != self.accuracy:
            raise ValueError("only sketches of the same relative accuracy merge")
        for index, count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + count
        self._zeros += other._zeros
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 <= q <= 1) within the relative accuracy; None if empty."""
        if not 0 <= q <= 1:
            raise ValueError("q must be between 0 and 1")
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self._zeros
        if seen > rank:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen > rank:
                # 2 * gamma**index / (gamma + 1), written so that no step overflows:
                # gamma**(index - 1) is below a value counted here, and the product
                # overflows only when the estimate is beyond every float, where the
                # clamp to the maximum gives the closer answer.
                estimate = self._gamma ** (index - 1) * (1 + self.accuracy)
                return min(max(estimate, self.min), self.max)
        return self.max  # not reached: the counts add up to self.count

    @property
    def buckets(self) -> int:
        """How many counters the sketch holds (its memory, apart from a few numbers)."""
        return len(self._buckets) + (1 if self._zeros else 0)
