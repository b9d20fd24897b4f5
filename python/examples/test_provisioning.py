"""Provisioning and onboarding: devices provisioned in bulk connect with
their own credentials, over MQTT (paho-mqtt) or HTTP, and follow their
lifecycle: provisioned, active, suspended; credentials rotate."""

import json
import threading
import time
from datetime import timedelta

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotmock import IotMockError


def connect(mock, username, password):
    """A paho client connected as a device, and the CONNACK reason."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=username)
    client.username_pw_set(username, password)
    answered = threading.Event()
    reason = []
    client.on_connect = lambda c, userdata, flags, code, props: (reason.append(code), answered.set())
    client.connect(mock.mqtt_host, mock.mqtt_port)
    client.loop_start()
    assert answered.wait(5), "no CONNACK"
    return client, reason[0]


def eventually(read, check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check(value := read()):
        assert time.monotonic() < deadline, value
        time.sleep(0.02)
    return value


@pytest.mark.iotmock(mqtt_auth="devices")
def test_bulk_provisioned_meters_onboard_over_mqtt(iotmock):
    batch = iotmock.devices.bulk(3, "meter-{n:02}", template={"tags": ["meters"], "simulated": False})
    password = {d["id"]: d["credentials"]["password"] for d in batch["devices"]}
    assert {d["state"] for d in iotmock.devices.list(tag="meters")} == {"provisioned"}

    meter, reason = connect(iotmock, "meter-01", password["meter-01"])
    assert not reason.is_failure
    online = eventually(
        lambda: iotmock.devices.get("meter-01"), lambda d: d["connectivity"]["state"] == "online"
    )
    assert online["state"] == "active"
    meter.publish("devices/meter-01/telemetry/energy", json.dumps({"value": 12.5}), qos=1).wait_for_publish(5)
    iotmock.mqtt.verify("devices/meter-01/telemetry/energy", {"value": 12.5}, within=2000)
    meter.disconnect()
    meter.loop_stop()

    _, wrong = connect(iotmock, "meter-02", "not-the-password")
    assert wrong == "Bad user name or password"
    iotmock.devices.patch("meter-03", state="suspended")
    _, suspended = connect(iotmock, "meter-03", password["meter-03"])
    assert suspended == "Not authorized"


def test_an_http_device_onboards_by_calling_in(iotmock):
    password = iotmock.devices.create("gauge-1", simulated=False)["credentials"]["password"]
    device = iotmock.device_api("gauge-1", password)
    device.send_telemetry({"sensor": "pressure", "value": 1013.2, "unit": "hPa"})
    view = iotmock.devices.get("gauge-1")
    assert view["state"] == "active"
    assert view["connectivity"]["state"] == "online" and view["connectivity"]["protocol"] == "http"
    assert [(r.sensor, r.value) for r in iotmock.telemetry.export(device="gauge-1")] == [("pressure", 1013.2)]

    # Silence past --http-device-timeout (30 s of simulated time) is offline.
    iotmock.clock.advance(timedelta(seconds=31))
    assert iotmock.devices.get("gauge-1")["connectivity"]["state"] == "offline"

    fresh = iotmock.devices.rotate_credentials("gauge-1")["password"]
    with pytest.raises(IotMockError) as refused:
        device.state()
    assert refused.value.status == 401
    iotmock.device_api("gauge-1", fresh).replace_state({"fw": "2.0.1"})
    assert iotmock.devices.get("gauge-1")["reported"]["state"] == {"fw": "2.0.1"}
