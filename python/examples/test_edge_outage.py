"""An edge node that filters, through an uplink outage: what it forwards
while the uplink is down is buffered and synced in order when it is back,
and every reading is accounted for: forwarded or filtered, none lost."""

from datetime import timedelta

import pytest

ROOM = {
    "tags": ["floor-1"],
    "sensors": [
        {
            "plugin": "temperature",
            "interval_ms": 1000,
            "config": {"mean": 30.0, "amplitude": 0.0, "noise": 1.5, "weather_sd": 0.0},
        }
    ],
}


@pytest.mark.iotmock(seed=7)
def test_an_uplink_outage_loses_nothing(iotmock):
    iotmock.devices.bulk(3, "room-{n}", template=ROOM)
    iotmock.edge.create(
        "gw-1",
        devices={"tag": "floor-1"},
        rules=[{"plugin": "edge-threshold", "config": {"sensor": "temperature", "max": 30.0}}],
        window_ms=5_000,
        buffer={"capacity": 10_000, "policy": "drop_oldest"},
    )
    with iotmock.mqtt.subscribe("edge/gw-1/uplink/readings/#", qos=1) as cloud:
        iotmock.edge.uplink("gw-1", "down")
        iotmock.clock.advance(timedelta(minutes=1))
        node = iotmock.edge.get("gw-1")
        assert node["readings"]["in"] == 180, "three rooms, a minute"
        buffered = node["uplink"]["buffered"]
        assert 0 < buffered < 180, "the filter kept some, not all"
        assert node["uplink"]["dropped"] == 0
        assert cloud.messages == [], "nothing reaches the cloud while the uplink is down"

        iotmock.edge.uplink("gw-1", "up")
        synced = cloud.wait_for(buffered)
    assert len(synced) == buffered
    readings = [m.json() for m in synced]
    assert all(r["value"] <= 30.0 for r in readings), "only what the filter keeps"
    seqs = [r["seq"] for r in readings]
    assert seqs == sorted(seqs), "in order"

    node = iotmock.edge.get("gw-1")
    assert node["readings"]["out"] == buffered
    assert node["readings"]["out"] + node["readings"]["filtered"] == node["readings"]["in"]
    assert node["uplink"]["flushed"] == buffered and node["uplink"]["dropped"] == 0
    exported = iotmock.telemetry.export(sensor="temperature")
    assert len(exported) == 180
    assert len([r for r in exported if r.value <= 30.0]) == buffered, (
        "the filter's decisions match the raw data"
    )
