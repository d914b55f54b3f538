"""The seasonal forecast and its measured error (MAPE), on synthetic series with known answers,
and the forecast an indicator stores (both databases for the last)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from cityos.core.access import SYSTEM
from cityos.ops import forecast as fc
from cityos.ops import indicators as ind
from cityos.ops.models import IndicatorValue
from tests.ops.conftest import OPS

# Midnight in the city (UTC+8), so hour buckets line up with the synthetic days.
START = dt.datetime(2026, 3, 1, 16, 0, tzinfo=dt.UTC)


def base(hour: float) -> float:
    return 100 + 10 * math.sin(2 * math.pi * hour / 24)


def test_mape_is_the_backtest_error_of_the_same_method():
    # Days 0 and 1 repeat the same hourly pattern; day 2 runs 10 % above it. Day 0 is the warm-up;
    # day 1 is forecast exactly (APE 0); day 2 is forecast as the pattern, 1/11 below (APE 9.09 %).
    history = [(START + dt.timedelta(hours=d * 24 + h), base(h) * (1.1 if d == 2 else 1.0))
               for d in range(3) for h in range(24)]
    value, mape = fc.forecast(history, 3600)
    assert mape == pytest.approx(100 * (24 * 0 + 24 * (0.1 / 1.1)) / 48, abs=1e-3)
    # The next hour (day 3, 00:00) is the mean of that hour on days 0-2.
    assert value == pytest.approx((base(0) * 2 + base(0) * 1.1) / 3, rel=1e-6)


def test_a_daily_sine_is_forecast_within_its_hourly_resolution():
    history = [(START + dt.timedelta(minutes=10 * i), base(i / 6)) for i in range(6 * 24 * 4)]
    now = history[-1][0]
    value, mape = fc.forecast(history, dt.timedelta(hours=2), now=now)
    # Mean of a sine over the hour 2 hours ahead, against its value at that time: close, not exact.
    hour = ((now + dt.timedelta(hours=2)).astimezone(dt.timezone(dt.timedelta(hours=8))).hour)
    expected = sum(base(hour + k / 6) for k in range(6)) / 6
    assert value == pytest.approx(expected, abs=1e-5)  # rounded to 6 places
    assert 0 < mape < 2.0


def test_without_seasonal_history_the_recent_mean_is_the_forecast():
    history = [(START + dt.timedelta(minutes=i), v) for i, v in enumerate([10.0] * 30 + [20.0] * 70)]
    value, mape = fc.forecast(history, 600)
    assert value == pytest.approx(20.0)  # the last hour: all 20
    assert mape is None  # less than a day: nothing to score
    assert fc.forecast([], 600) == (None, None)


def test_a_rising_afternoon_forecast_crosses_the_warning_threshold(ops_city, monkeypatch):
    """Three days where AQI climbs from 60 at 08:00 to 160 at 14:00; at 10:00 today it reads 90
    (attention), and the forecast for 14:00 is in warning."""
    city = dt.timezone(dt.timedelta(hours=8))
    today = dt.datetime(2026, 3, 5, tzinfo=city)

    def aqi(hour: float) -> float:
        return 60 + max(0.0, min(hour - 8, 6)) * 100 / 6

    values = {"v": 0.0}
    monkeypatch.setattr(ind, "SOURCES", {**ind.SOURCES, "test.aqi": ind.Source(
        "test.aqi", lambda s, p, d: values["v"], "the test's AQI")})
    with ops_city.sessions() as s:
        i = ind.indicator_upsert(s, SYSTEM, {
            "code": "aqi", "name": "AQI", "department": OPS, "source": "test.aqi",
            "params": {"horizon_s": 4 * 3600}, "refresh_seconds": 60,
            "thresholds": {"direction": "up", "attention": 80, "warning": 150, "critical": 200}})
        s.flush()
        for d in range(3, 0, -1):
            for h in range(24):
                at = today - dt.timedelta(days=d) + dt.timedelta(hours=h)
                s.add(IndicatorValue(indicator_id=i.id, at=at.astimezone(dt.UTC), value=aqi(h)))
        s.flush()
        values["v"] = 90.0
        now = (today + dt.timedelta(hours=10)).astimezone(dt.UTC)
        ind.refresh(s, i, now)
        s.commit()
        assert i.level == "attention"
        f = i.forecast
        assert f["level"] == "warning" and f["value"] == pytest.approx(160.0)
        assert f["at"] == "2026-03-05T06:00:00Z" and f["horizon_s"] == 4 * 3600
        assert f["mape"] is not None and f["mape"] < 1.0  # the same pattern every day
    r = ops_city.client.get("/api/ops/indicators/aqi", headers=ops_city.headers("ops_staff"))
    assert r.json()["forecast"]["level"] == "warning"
