"""Short-term forecast of an indicator (短期预测): a seasonal baseline with a measured error.

The forecast for time t is the mean of the values recorded in the same hour of the day (city
time) over the last `days` days, counting only hours that had ended by the time the forecast is
made (t - horizon). Without such hours it falls back to the mean of the last hour known then,
and failing that to the last known value.

Its error is measured, not assumed: the same method is replayed on the history (a backtest),
forecasting each past value from what was known `horizon` before it, and the mean absolute
percentage error (MAPE, %) of those forecasts is reported beside the forecast. Values in the
first day of the history are the warm-up (nothing seasonal to go on) and are not scored, nor are
values of zero (no percentage error exists).
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Sequence

HOUR = 3600
DAY = 86_400
CITY_OFFSET_S = 8 * HOUR  # Asia/Shanghai: UTC+8 all year; hours of the day are the city's
DEFAULT_DAYS = 7
MAX_SCORED = 1000  # the backtest scores at most this many values, evenly spread


def _epoch(at: dt.datetime) -> float:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.timestamp()


class _Model:
    """The history as hourly buckets (sum, count) and sorted times with prefix sums."""

    def __init__(self, history: Sequence[tuple[dt.datetime, float]], days: int) -> None:
        points = sorted((_epoch(at), float(v)) for at, v in history)
        self.times = [t for t, _ in points]
        self.values = [v for _, v in points]
        self.prefix = [0.0]
        for v in self.values:
            self.prefix.append(self.prefix[-1] + v)
        self.buckets: dict[int, tuple[float, int]] = {}
        for t, v in points:
            h = int((t + CITY_OFFSET_S) // HOUR)
            s, n = self.buckets.get(h, (0.0, 0))
            self.buckets[h] = (s + v, n + 1)
        self.days = days

    def seasonal(self, t: float, known_until: float) -> float | None:
        """Mean of the same hour of the day on earlier days, of hours that ended by `known_until`."""
        h = int((t + CITY_OFFSET_S) // HOUR)
        total, count = 0.0, 0
        for k in range(1, self.days + 1):
            hk = h - 24 * k
            end = (hk + 1) * HOUR - CITY_OFFSET_S
            if end > known_until:
                continue
            s, n = self.buckets.get(hk, (0.0, 0))
            total, count = total + s, count + n
        return total / count if count else None

    def recent(self, known_until: float) -> float | None:
        """Mean of the last hour known at `known_until`, else the last value known then."""
        hi = bisect.bisect_right(self.times, known_until)
        if hi == 0:
            return None
        lo = bisect.bisect_left(self.times, known_until - HOUR)
        if hi > lo:
            return (self.prefix[hi] - self.prefix[lo]) / (hi - lo)
        return self.values[hi - 1]

    def predict(self, t: float, horizon: float) -> float | None:
        known = t - horizon
        value = self.seasonal(t, known)
        return value if value is not None else self.recent(known)

    def mape(self, horizon: float) -> float | None:
        if not self.times:
            return None
        start = self.times[0] + DAY
        first = bisect.bisect_left(self.times, start)
        idx = range(first, len(self.times))
        if len(idx) > MAX_SCORED:
            step = len(idx) / MAX_SCORED
            idx = sorted({first + int(i * step) for i in range(MAX_SCORED)})  # type: ignore[assignment]
        errors = []
        for i in idx:
            actual = self.values[i]
            if actual == 0:
                continue
            p = self.predict(self.times[i], horizon)
            if p is not None:
                errors.append(abs(actual - p) / abs(actual))
        return 100.0 * sum(errors) / len(errors) if errors else None


def forecast(history: Sequence[tuple[dt.datetime, float]], horizon: float | dt.timedelta, *,
             now: dt.datetime | None = None, days: int = DEFAULT_DAYS) -> tuple[float | None, float | None]:
    """(forecast value at now + horizon, MAPE % of the method on this history). `now` defaults to
    the last point of the history. (None, None) without history."""
    h = horizon.total_seconds() if isinstance(horizon, dt.timedelta) else float(horizon)
    if h <= 0:
        raise ValueError("horizon must be positive")
    if not history:
        return None, None
    model = _Model(history, days)
    t0 = _epoch(now) if now is not None else model.times[-1]
    value = model.predict(t0 + h, h)
    mape = model.mape(h)
    return (round(value, 6) if value is not None else None,
            round(mape, 4) if mape is not None else None)
