"""Streaming telemetry from several sensors, checked statistically: a day
of readings from four rooms under a manual clock, exported and compared
with the models' configuration, and the same again under the same seed."""

import statistics
from collections import defaultdict
from datetime import timedelta
from itertools import pairwise

import pytest

from iotmock import IotMock

ROOM = {
    "tags": ["rooms"],
    "sensors": [
        # No day-to-day weather: one day's mean and swing are the configured ones.
        {
            "plugin": "temperature",
            "interval_ms": 60_000,
            "config": {
                "mean": 21.0,
                "amplitude": 2.0,
                "peak_hour": 15.0,
                "weather_sd": 0.0,
                "amplitude_variability": 0.0,
            },
        },
        {"plugin": "humidity", "interval_ms": 60_000},
        {"plugin": "energy", "interval_ms": 60_000},
    ],
}


def series(mock):
    """Values per (device, sensor), in time order, after one simulated day."""
    mock.devices.bulk(4, "room-{n}", template=ROOM)
    mock.clock.advance(timedelta(days=1))
    values = defaultdict(list)
    for reading in mock.telemetry.export():
        values[reading.device, reading.sensor].append(reading)
    return values


@pytest.mark.iotmock(seed=11)
def test_a_day_of_rooms_matches_the_models(iotmock):
    values = series(iotmock)
    assert len(values) == 12
    for device in ["room-1", "room-2", "room-3", "room-4"]:
        temperature = values[device, "temperature"]
        assert len(temperature) == 1440, "one reading a minute"
        celsius = [r.value for r in temperature]
        assert statistics.fmean(celsius) == pytest.approx(21.0, abs=0.3)
        assert max(celsius) - min(celsius) == pytest.approx(4.0, abs=1.0), "twice the amplitude"
        warmest = max(temperature, key=lambda r: r.value).ts
        assert 13 <= warmest.hour <= 17, f"peak near 15:00, got {warmest}"

        humidity = [r.value for r in values[device, "humidity"]]
        assert all(0 <= h <= 100 for h in humidity)
        assert statistics.correlation(celsius, humidity) < -0.5, "warm air is drier"

        energy = [r.value for r in values[device, "energy"]]
        assert all(b >= a for a, b in pairwise(energy)), "a meter never runs back"
        assert energy[-1] > energy[0]


def test_the_same_seed_gives_the_same_readings():
    runs = []
    for _ in range(2):
        with IotMock(seed=3, clock="manual", scenario="none") as mock:
            runs.append({key: [(r.ts, r.value) for r in rs] for key, rs in series(mock).items()})
    assert runs[0] == runs[1]
