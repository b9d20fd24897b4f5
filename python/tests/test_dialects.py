"""Dialects judged by clients written for the real platforms, not by us:
ThingsBoard's own Python device SDK (`tb-mqtt-client`) as a real device of
the `thingsboard` dialect."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tb_device_mqtt import TBDeviceMqttClient

from iotmock import IotMock


def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def test_thingsboard_sdk_reports_telemetry_and_attributes_and_answers_an_rpc() -> None:
    with IotMock(scenario="none", mqtt_auth="devices") as mock:
        created = mock.devices.create("tb-1", simulated=False, dialect="thingsboard")
        assert created["dialect"] == "thingsboard"
        token = created["credentials"]["username"]
        # With --mqtt-auth devices a device connects under its own id as
        # client id; the access token is the user name, as on ThingsBoard.
        device = TBDeviceMqttClient(
            "127.0.0.1",
            port=mock.mqtt_port,
            username=token,
            password=created["credentials"]["password"],
            client_id=token,
        )
        answered: list[tuple[str, Any]] = []

        def on_rpc(request_id: str, body: Any) -> None:
            # The SDK's own client-side call (getSessionLimits) comes back on
            # the shared request topic too: answer only what iotmock sends.
            if not isinstance(body, dict) or body.get("method") != "set_target":
                return
            answered.append((request_id, body))
            device.send_rpc_reply(request_id, {"target": body["params"]["target"], "applied": True})

        device.set_server_side_rpc_request_handler(on_rpc)
        device.connect()
        try:
            _until(device.is_connected, "connection")
            device.send_telemetry({"ts": 1767225600123, "values": {"temperature": 21.5, "door": True}})
            device.send_attributes({"firmware": "1.4.2"})

            readings = _until(lambda: mock.telemetry.export(device="tb-1"), "exported reading")
            by_sensor = {r.sensor: r for r in readings}
            assert by_sensor["temperature"].value == 21.5
            assert by_sensor["door"].value == 1.0
            assert int(by_sensor["temperature"].ts.timestamp() * 1000) == 1767225600123

            reported = _until(lambda: mock.devices.get("tb-1").get("reported"), "reported state")
            assert reported["state"]["firmware"] == "1.4.2", reported

            # The command reaches the device as a server-side RPC once it
            # listens; its reply completes the command.
            command = mock.commands.send("tb-1", "set_target", params={"target": 22})
            done = command.wait(timeout=10)
            assert done.status == "completed", done
            assert done.result == {"target": 22, "applied": True}
            assert answered and answered[0][1] == {"method": "set_target", "params": {"target": 22}}
            assert int(answered[0][0]) == 1, "requests are numbered per device from 1"
        finally:
            device.disconnect()
            device.stop()


def test_two_thingsboard_sdk_devices_each_get_only_their_own_rpcs() -> None:
    """Both devices listen on the same `v1/devices/me/rpc/request/+`, as on
    ThingsBoard; each gets, and answers, only the requests sent to it."""
    # Open access, so that each device connects with the client id the SDK
    # makes up (under mqtt_auth="devices" it must be the device id).
    with IotMock(scenario="none") as mock:
        devices: dict[str, TBDeviceMqttClient] = {}
        got: dict[str, list[Any]] = {}
        for name in ("tb-a", "tb-b"):
            created = mock.devices.create(name, simulated=False, dialect="thingsboard")
            # The SDK's default client id: empty, so the broker assigns one.
            device = TBDeviceMqttClient(
                "127.0.0.1",
                port=mock.mqtt_port,
                username=created["credentials"]["username"],
                password=created["credentials"]["password"],
            )
            got[name] = []

            def on_rpc(request_id: str, body: Any, name: str = name) -> None:
                if not isinstance(body, dict) or body.get("method") != "whoami":
                    return
                got[name].append(body["params"])
                devices[name].send_rpc_reply(request_id, {"me": name, "asked": body["params"]["to"]})

            device.set_server_side_rpc_request_handler(on_rpc)
            devices[name] = device
        try:
            for device in devices.values():
                device.connect()
                _until(device.is_connected, "connection")
            for name in ("tb-a", "tb-b", "tb-a"):
                done = mock.commands.send(name, "whoami", params={"to": name}).wait(timeout=10)
                assert done.status == "completed", done
                assert done.result == {"me": name, "asked": name}, done
            assert got == {"tb-a": [{"to": "tb-a"}, {"to": "tb-a"}], "tb-b": [{"to": "tb-b"}]}
        finally:
            for device in devices.values():
                device.disconnect()
                device.stop()
