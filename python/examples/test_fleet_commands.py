"""Commands to a fleet: devices whose answers get lost are retried, an
offline device gets its command when it comes back, and one that stays
away sees its command expire, never delivered."""

from datetime import timedelta

import pytest


@pytest.mark.iotmock(seed=4)
def test_a_fleet_command_with_retries_and_offline_devices(iotmock):
    # Half the answers are lost on the way back.
    iotmock.devices.bulk(
        6,
        "hvac-{n}",
        template={
            "tags": ["hvac"],
            "command_handler": {"plugin": "flaky-acks", "config": {"drop_rate": 0.5}},
        },
    )
    iotmock.devices.connectivity("hvac-5", "offline")
    iotmock.devices.connectivity("hvac-6", "offline")

    batch = iotmock.commands.send_fleet(
        {"tag": "hvac"},
        "set_mode",
        {"mode": "eco"},
        timeout_ms=1_000,
        retries=10,
        backoff_ms=100,
        ttl_ms=600_000,
    )
    assert batch.total == 6
    queued = batch.by_device()
    assert queued["hvac-5"]["status"] == queued["hvac-6"]["status"] == "queued"

    iotmock.clock.advance(timedelta(minutes=3))
    online = [iotmock.commands.get(queued[f"hvac-{n}"]["id"]) for n in range(1, 5)]
    assert [c.status for c in online] == ["completed"] * 4
    assert any(c.attempts > 1 for c in online), "some answers were lost and the command retried"
    for command in online:
        attempts = [h["attempt"] for h in command.history if h["status"] == "sent"]
        assert attempts == list(range(1, command.attempts + 1)), "one delivery per attempt, numbered"

    # hvac-5 comes back before the command's ttl runs out; hvac-6 never does.
    iotmock.devices.connectivity("hvac-5", "online")
    iotmock.clock.advance(timedelta(minutes=8))
    batch.wait(timeout=10)
    final = {device: item["status"] for device, item in batch.by_device().items()}
    assert final["hvac-5"] == "completed"
    assert final["hvac-6"] == "expired"
    assert batch.summary == {"completed": 5, "expired": 1}
    expired = iotmock.commands.get(queued["hvac-6"]["id"])
    assert expired.attempts == 0, "never delivered"
    iotmock.mqtt.verify(f"devices/hvac-6/commands/{expired.id}", exactly=0)
    iotmock.mqtt.verify("devices/hvac-5/commands/+", {"name": "set_mode"})
