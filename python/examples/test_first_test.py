"""A first test: provision a thermostat behind a gateway, command it, and
take the gateway's uplink down and up. Every step is simulated time."""

from datetime import timedelta

import pytest


@pytest.mark.iotmock(seed=42)
def test_thermostat_behind_a_gateway(iotmock):
    iotmock.devices.create(
        "th-1",
        tags=["floor-1"],
        command_handler="thermostat",
        sensors=[{"plugin": "temperature", "interval_ms": 1000}],
    )
    iotmock.edge.create(
        "gw-1",
        devices={"tag": "floor-1"},
        rules=[{"plugin": "edge-aggregate", "config": {"forward": True}}],
        window_ms=10_000,
    )

    command = iotmock.commands.send("th-1", "set_target", {"target": 24})
    iotmock.clock.advance(1_000)
    assert command.wait().status == "completed"
    assert [ack["status"] for ack in command.acks] == ["received", "completed"]

    iotmock.edge.uplink("gw-1", "down")
    iotmock.clock.advance(timedelta(minutes=1))
    buffered = iotmock.edge.get("gw-1")["uplink"]["buffered"]
    assert buffered > 0
    since = iotmock.mqtt.cursor()
    iotmock.edge.uplink("gw-1", "up")
    iotmock.mqtt.verify("edge/gw-1/uplink/#", exactly=buffered, since=since)
