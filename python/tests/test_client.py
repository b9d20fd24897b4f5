"""The API client against the real server, one route group at a time."""

import time
from datetime import timedelta

import httpx
import pytest

from iotmock import Command, IotMockError, Reading


def test_problem_json_becomes_one_exception_with_its_fields(iotmock):
    iotmock.devices.create("d-1")
    with pytest.raises(IotMockError) as taken:
        iotmock.devices.create("d-1")
    assert taken.value.status == 409
    assert taken.value.title == "Conflict"
    assert taken.value.type.startswith("https://")
    assert "d-1" in taken.value.detail
    with pytest.raises(IotMockError) as invalid:
        iotmock.mqtt.publish("a/#", 1)
    assert invalid.value.status == 422
    assert "wildcards" in invalid.value.detail
    assert "422" in str(invalid.value) and "/api/v1/mqtt/publish" in str(invalid.value)


def test_devices_create_get_patch_credentials_connectivity_delete(iotmock):
    created = iotmock.devices.create("th-1", type="thermometer", tags=["floor-1"], group="b")
    assert created["credentials"]["username"] == "th-1"
    assert created["credentials"]["password"]
    assert iotmock.devices.get("th-1")["group"] == "b"
    offline = iotmock.devices.connectivity("th-1", "offline")
    assert offline["connectivity"]["state"] == "offline"
    assert iotmock.devices.patch("th-1", state="suspended")["state"] == "suspended"
    rotated = iotmock.devices.rotate_credentials("th-1")
    assert rotated["password"] != created["credentials"]["password"]
    iotmock.devices.delete("th-1")
    with pytest.raises(IotMockError) as gone:
        iotmock.devices.get("th-1")
    assert gone.value.status == 404


def test_devices_list_follows_every_cursor(iotmock):
    created = iotmock.devices.bulk(25, "dev-{n:02}", template={"tags": ["bulk"], "simulated": False})
    assert created["created"] == 25
    iotmock.devices.create("other")
    listed = [d["id"] for d in iotmock.devices.list(tag="bulk", page_size=10)]
    assert listed == [f"dev-{n:02}" for n in range(1, 26)]


def test_a_command_is_followed_to_its_final_state(iotmock):
    iotmock.devices.create("th-1", command_handler="thermostat")
    command = iotmock.commands.send("th-1", "set_target", {"target": 22}, timeout_ms=2000)
    assert isinstance(command, Command) and not command.final
    iotmock.clock.advance(timedelta(seconds=1))
    assert command.wait(timeout=10) is command
    assert command.status == "completed"
    assert [h["status"] for h in command.history][-1] == "completed"
    assert {a["status"] for a in command.acks} == {"received", "completed"}
    assert [c.id for c in iotmock.commands.list(device="th-1")] == [command.id]
    assert iotmock.commands.get(command.id).status == "completed"


def test_wait_on_a_stopped_clock_says_how_to_move_it(iotmock):
    iotmock.devices.create("th-1", command_handler="thermostat")
    command = iotmock.commands.send("th-1", "set_target", {"target": 22})
    with pytest.raises(TimeoutError, match="clock is manual"):
        command.wait(timeout=0.3)


def test_a_queued_command_can_be_cancelled(iotmock):
    iotmock.devices.create("off-1")
    iotmock.devices.connectivity("off-1", "offline")
    command = iotmock.commands.send("off-1", "reboot")
    assert command.status == "queued"
    assert command.cancel().status == "cancelled"
    assert iotmock.commands.get(command.id).status == "cancelled"


def test_fleet_commands_by_tag_ids_and_all(iotmock):
    iotmock.devices.bulk(3, "v-{n}", template={"tags": ["valves"]})
    batch = iotmock.commands.send_fleet({"tag": "valves"}, "close")
    assert batch.total == 3
    batch.wait(timeout=10)
    assert batch.done and batch.summary == {"completed": 3}
    assert set(batch.by_device()) == {"v-1", "v-2", "v-3"}
    assert iotmock.commands.batch(batch.id).done
    assert iotmock.commands.send_fleet(["v-1", "v-2"], "open").total == 2
    assert iotmock.commands.send_fleet("all", "ping").total == 3


def test_clock_advances_by_ms_or_timedelta(iotmock):
    start = iotmock.clock.now()["now_ms"]
    iotmock.clock.advance(1500)
    iotmock.clock.advance(timedelta(minutes=1))
    assert iotmock.clock.now()["now_ms"] == start + 61_500


def sensor_fleet(iotmock, count=2, interval_ms=1000):
    iotmock.devices.bulk(
        count,
        "s-{n}",
        template={"sensors": [{"plugin": "temperature", "interval_ms": interval_ms}]},
    )


def test_telemetry_export_as_dataclasses_over_pages(iotmock):
    sensor_fleet(iotmock)
    iotmock.clock.advance(10_000)
    readings = iotmock.telemetry.export(sensor="temperature", page_size=7)
    assert len(readings) == 20
    assert all(isinstance(r, Reading) and r.unit == "celsius" for r in readings)
    assert [r.ts for r in readings] == sorted(r.ts for r in readings)
    only_one = iotmock.telemetry.export(device="s-1", since=readings[0].ts)
    assert {r.device for r in only_one} == {"s-1"}


def test_telemetry_as_a_dataframe(iotmock):
    pandas = pytest.importorskip("pandas")
    sensor_fleet(iotmock)
    iotmock.clock.advance(5_000)
    frame = iotmock.telemetry.dataframe(sensor="temperature")
    assert isinstance(frame, pandas.DataFrame)
    assert len(frame) == 10
    assert set(frame["device"]) == {"s-1", "s-2"}
    assert frame["value"].between(-40, 60).all()


def test_telemetry_stream_iterates_and_resumes_after_the_last_reading(iotmock):
    sensor_fleet(iotmock)
    with iotmock.telemetry.stream(device="s-1", timeout=10) as stream:
        iotmock.clock.advance(3_000)
        first = stream.take(3)
    assert [r.device for r in first] == ["s-1"] * 3
    assert [r.id for r in first] == sorted(r.id for r in first)
    iotmock.clock.advance(2_000)  # published while nobody listens
    with iotmock.telemetry.stream(device="s-1", after=stream.last_id, timeout=10) as resumed:
        missed = resumed.take(2)
    exported = [r for r in iotmock.telemetry.export(device="s-1")]
    assert [r.ts for r in first + missed] == [r.ts for r in exported]
    assert not stream.gaps and not resumed.gaps and stream.missed == 0
    with pytest.raises(IotMockError, match="queue must be"), iotmock.telemetry.stream(queue=0):
        pass


def test_a_dropped_stream_reconnects_and_resumes_without_loss(iotmock):
    sensor_fleet(iotmock)
    with iotmock.telemetry.stream(device="s-1", timeout=10) as stream:
        iotmock.clock.advance(2_000)
        first = stream.take(2)
        stream._disconnect()  # the connection drops
        iotmock.clock.advance(3_000)
        rest = stream.take(3)
    assert stream.reconnects >= 1
    assert [r.ts for r in first + rest] == [r.ts for r in iotmock.telemetry.export(device="s-1")]


def test_edge_nodes_create_list_uplink_delete(iotmock):
    sensor_fleet(iotmock)
    node = iotmock.edge.create("gw", ["s-1", "s-2"], [{"plugin": "edge-aggregate"}], window_ms=5000)
    assert node["id"] == "gw"
    assert [n["id"] for n in iotmock.edge.list()] == ["gw"]
    assert iotmock.edge.uplink("gw", "down")["uplink"]["state"] == "down"
    iotmock.clock.advance(10_000)
    assert iotmock.edge.get("gw")["uplink"]["buffered"] > 0
    assert iotmock.edge.uplink("gw", "up")["uplink"]["buffered"] == 0
    iotmock.edge.delete("gw")
    assert iotmock.edge.list() == []


def test_stubs_answer_and_the_journal_verifies(iotmock):
    iotmock.stubs.add(
        id="ota",
        request={"method": "GET", "path": "/ota/{device}"},
        response={"status": 200, "body": {"device": "{{request.path.device}}"}},
    )
    assert [s["id"] for s in iotmock.stubs.list()] == ["ota"]
    assert iotmock.stubs.get("ota")["id"] == "ota"
    answer = iotmock.stubs.request("GET", "/ota/d-7", headers={"x-fw": "1.4"})
    assert answer.json() == {"device": "d-7"}
    assert httpx.get(iotmock.stubs.url("ota/d-8")).status_code == 200
    assert [r["path"] for r in iotmock.http.requests(stub="ota")] == ["/ota/d-7", "/ota/d-8"]
    iotmock.http.verify(stub="ota", exactly=2)
    iotmock.http.verify(path="/ota/{device}", headers={"x-fw": "1.4"})
    iotmock.stubs.delete("ota")
    assert iotmock.stubs.request("GET", "/ota/d-7").status_code == 404
    iotmock.stubs.add(request={"path": "/x"}, response={"status": 204})
    iotmock.stubs.clear()
    assert iotmock.stubs.list() == []


def test_a_failed_http_verify_shows_the_near_misses(iotmock):
    iotmock.stubs.add(id="ingest", request={"method": "POST", "path": "/ingest"}, response={"status": 202})
    iotmock.stubs.request("POST", "/ingest", json={"kind": "heartbeat"})
    with pytest.raises(AssertionError) as failed:
        iotmock.http.verify(path="/ingest", body_contains={"kind": "alarm"})
    message = str(failed.value)
    assert message.startswith("HTTP verify failed")
    assert "near misses (1, selected" in message and "heartbeat" in message


def test_mqtt_publish_messages_verify_and_status(iotmock):
    assert iotmock.mqtt.publish("cloud/config", {"rate": 5}, qos=1, retain=True) == "routed"
    iotmock.mqtt.publish("cloud/note", "plain text")
    messages = iotmock.mqtt.messages("cloud/#")
    assert [m.topic for m in messages] == ["cloud/config", "cloud/note"]
    assert messages[0].json() == {"rate": 5} and messages[0].retain and messages[0].qos == 1
    assert messages[1].text == "plain text" and messages[1].client_id is None
    assert iotmock.mqtt.messages("cloud/#", since=messages[0].cursor) == messages[1:]
    iotmock.mqtt.verify("cloud/config", {"rate": 5}, exactly=1)
    assert iotmock.mqtt.status()["state"] == "up"
    assert iotmock.mqtt.cursor() >= messages[1].cursor


def test_a_failed_mqtt_verify_shows_the_near_misses(iotmock):
    iotmock.mqtt.publish("devices/d-1/acks/c-1", {"status": "rejected"})
    with pytest.raises(AssertionError) as failed:
        iotmock.mqtt.verify("devices/+/acks/#", {"status": "completed"}, within=200)
    message = str(failed.value)
    assert message.startswith("MQTT verify failed")
    assert "rejected" in message and "near misses (1, selected" in message


def test_subscribe_collects_messages_with_paho(iotmock):
    with iotmock.mqtt.subscribe("alerts/#", qos=1) as sub:
        assert any("alerts/#" in c["subscriptions"] for c in iotmock.mqtt.clients()), iotmock.mqtt.clients()
        iotmock.mqtt.publish("alerts/fire", {"floor": 3}, qos=1)
        iotmock.mqtt.publish("other", 1)
        received = sub.wait_for(1)
    assert [(m.topic, m.json(), m.qos) for m in received] == [("alerts/fire", {"floor": 3}, 1)]
    with iotmock.mqtt.subscribe("quiet") as sub, pytest.raises(AssertionError, match="expected 1 message"):
        sub.wait_for(1, timeout=0.2)


def test_an_outage_holds_qos1_publishes_and_replays_them(iotmock):
    iotmock.mqtt.outage(timedelta(seconds=2))
    assert iotmock.mqtt.status()["state"] == "outage"
    assert iotmock.mqtt.publish("t", "kept", qos=1) == "held"
    assert iotmock.mqtt.publish("t", "lost", qos=0) == "dropped"
    with iotmock.mqtt.subscribe("t") as sub:  # connects once the broker is back
        assert sub.client.is_connected()
    deadline = time.monotonic() + 5
    while (policy := iotmock.mqtt.status()["outage_policy"])["replayed"] < 1:
        assert time.monotonic() < deadline, policy
        time.sleep(0.02)
    assert (policy["replayed"], policy["dropped"]) == (1, 1)


def test_a_subscription_comes_back_after_an_outage(iotmock):
    with iotmock.mqtt.subscribe("after/#", qos=1) as sub:
        iotmock.mqtt.outage(timedelta(milliseconds=500))
        deadline = time.monotonic() + 10
        while iotmock.mqtt.status()["state"] != "up" or not any(
            "after/#" in c["subscriptions"] for c in iotmock.mqtt.clients()
        ):
            assert time.monotonic() < deadline, "the subscription did not come back"
            time.sleep(0.05)
        iotmock.mqtt.publish("after/outage", "back", qos=1)
        assert [m.text for m in sub.wait_for(1)] == ["back"]


def test_a_fault_rule_drops_what_it_matches_and_counts_it(iotmock):
    with iotmock.mqtt.subscribe("f/#", qos=0) as sub:
        rule = iotmock.mqtt.fault("drop", match={"topic": "f/lost", "direction": "out"})
        iotmock.mqtt.publish("f/lost", "x")
        iotmock.mqtt.publish("f/kept", "y")
        assert [m.topic for m in sub.wait_for(1)] == ["f/kept"]
    listed = iotmock.mqtt.faults()
    assert [(r["id"], r["fired"]) for r in listed["rules"]] == [(rule["id"], 1)]
    assert listed["log"][0]["topic"] == "f/lost"
    assert [(d["topic"], d["reason"]) for d in iotmock.mqtt.drops()["items"]] == [
        ("f/lost", "fault")
    ]
    iotmock.mqtt.delete_fault(rule["id"])
    iotmock.mqtt.clear_faults()
    assert iotmock.mqtt.faults()["rules"] == []


def test_plugins_list_upload_delete(iotmock, built_plugin):
    names = {p["name"] for p in iotmock.plugins.list()}
    assert {"temperature", "thermostat", "edge-threshold"} <= names
    assert iotmock.plugins.get("temperature")["world"] == "sensor"
    with pytest.raises(IotMockError) as refused:
        iotmock.plugins.upload("junk", b"not a component")
    assert refused.value.status == 422
    uploaded = iotmock.plugins.upload("my-sensor", built_plugin)
    assert uploaded["name"] == "my-sensor" and uploaded["source"]["kind"] == "api"
    iotmock.plugins.delete("my-sensor")
    assert "my-sensor" not in {p["name"] for p in iotmock.plugins.list()}


def test_the_device_api_with_the_device_credentials(iotmock):
    password = iotmock.devices.create("meter-7", simulated=False)["credentials"]["password"]
    device = iotmock.device_api("meter-7", password)
    assert (
        device.send_telemetry([{"sensor": "energy", "value": 1.5}, {"sensor": "door", "value": 1}])[
            "accepted"
        ]
        == 2
    )
    assert device.replace_state({"fw": "1.4.2", "net": {"rssi": -71}})
    device.update_state({"fw": "1.5.0", "net": None})
    assert device.state()["state"] == {"fw": "1.5.0"}
    assert device.next_command() is None
    sent = iotmock.commands.send("meter-7", "reboot")
    fetched = device.next_command(wait=timedelta(seconds=5))
    assert fetched is not None and fetched["id"] == sent.id
    device.ack(sent.id, "completed", {"uptime_s": 3})
    assert sent.refresh().status == "completed" and sent.result == {"uptime_s": 3}
    with pytest.raises(IotMockError) as wrong:
        iotmock.device_api("meter-7", "wrong").state()
    assert wrong.value.status == 401


def test_health_metrics_and_openapi(iotmock):
    assert iotmock.health()["clock"]["mode"] == "manual"
    assert "iotmock_" in iotmock.metrics()
    assert iotmock.openapi()["info"]["title"] == "iotmock"


def test_advance_with_wait_delivered_leaves_nothing_in_flight(iotmock):
    sensor_fleet(iotmock)
    # The readings are QoS 0: the broker has written them to the socket
    # when the advance answers, and the client then syncs its open
    # subscriptions, so every reading of the span has been collected.
    with iotmock.mqtt.subscribe("devices/+/telemetry/#", qos=1) as sub:
        iotmock.clock.advance(10_000, wait_delivered=True)
        assert len(sub.messages) == 20


def test_sync_returns_once_what_the_broker_wrote_before_it_is_collected(iotmock):
    with iotmock.mqtt.subscribe("sync/#") as sub:
        for i in range(200):
            iotmock.mqtt.publish(f"sync/{i}", str(i))
        # Each publish is answered once routed; the marker goes out behind them.
        assert sub.sync()
        assert [m.text for m in sub.messages] == [str(i) for i in range(200)]
    # A closed subscription has nothing to sync.
    assert not sub.sync()
