"""Paho (a client we did not write) over TLS with a device certificate, and
over WebSockets, plain (ws) and over TLS (wss)."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from iotmock import IotMock

LISTENERS = ["--mqtts", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--wss", "127.0.0.1:0"]


@pytest.fixture(scope="module")
def tls_mock() -> Any:
    with IotMock(scenario="none", mqtt_auth="devices", args=LISTENERS) as mock:
        yield mock


def port(mock: IotMock, key: str) -> int:
    return int(str(mock.ready[key]).rpartition(":")[2])


class Received:
    """Messages a paho client got, with a way to wait for them."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.subscribed = threading.Event()
        self.got = threading.Event()

    def on_subscribe(self, *_: Any) -> None:
        self.subscribed.set()

    def on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.payloads.append(message.payload)
        self.got.set()


def client(
    client_id: str,
    *,
    transport: str = "tcp",
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    protocol: Any = mqtt.MQTTv311,
) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport, protocol=protocol
    )
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    if ca is not None:
        c.tls_set(
            ca_certs=str(ca),
            certfile=str(cert[0]) if cert else None,
            keyfile=str(cert[1]) if cert else None,
        )
    return c


def connect(c: mqtt.Client, port: int) -> int | None:
    """Connects; the CONNACK reason code (0: accepted), or None when the
    connection failed before one (a refused TLS handshake)."""
    done = threading.Event()
    codes: list[int] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        codes.append(reason.value)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_: done.set()
    try:
        c.connect("localhost", port)
    except (ssl.SSLError, OSError):
        return None
    c.loop_start()
    assert done.wait(10), "neither a CONNACK nor a disconnect"
    return codes[0] if codes else None


def write_cert(tmp: Path, mock: IotMock, device: str) -> tuple[Path, Path]:
    issued = mock.devices.issue_certificate(device)
    (tmp / f"{device}.crt").write_text(issued["certificate"])
    (tmp / f"{device}.key").write_text(issued["private_key"])
    return tmp / f"{device}.crt", tmp / f"{device}.key"


def admin_subscriber(mock: IotMock, **kwargs: Any) -> tuple[mqtt.Client, Received]:
    received = Received()
    sub = client(f"sub-{kwargs.get('transport', 'tcp')}-{id(received)}", **kwargs)
    sub.username_pw_set(*mock_creds(mock))
    sub.on_subscribe = received.on_subscribe
    sub.on_message = received.on_message
    return sub, received


def test_paho_publishes_with_a_device_certificate_over_tls(tls_mock: IotMock, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(tls_mock.ca_pem())
    tls_mock.devices.create("paho-1", simulated=False)
    cert = write_cert(tmp_path, tls_mock, "paho-1")

    sub, received = admin_subscriber(tls_mock, ca=ca, protocol=mqtt.MQTTv5)
    assert connect(sub, port(tls_mock, "mqtts")) == 0
    sub.subscribe("devices/paho-1/telemetry/#", qos=1)
    assert received.subscribed.wait(10)

    device = client("paho-1", ca=ca, cert=cert)
    assert connect(device, port(tls_mock, "mqtts")) == 0, "the certificate is the credential"
    device.publish("devices/paho-1/telemetry/t", b"21.5", qos=1).wait_for_publish(10)
    assert received.got.wait(10)
    assert received.payloads == [b"21.5"]

    tls_mock.devices.revoke_certificate("paho-1", tls_mock.devices.certificates("paho-1")[0]["serial"])
    again = client("paho-1", ca=ca, cert=cert)
    assert connect(again, port(tls_mock, "mqtts")) is None, "a revoked certificate was accepted"
    for c in (device, again, sub):
        c.loop_stop()
        c.disconnect()
    assert tls_mock.health()["tls"]["refused"]["revoked"] >= 1


@pytest.mark.parametrize("key", ["ws", "wss"])
def test_paho_over_websockets(tls_mock: IotMock, tmp_path: Path, key: str) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(tls_mock.ca_pem())
    tls = ca if key == "wss" else None
    sub, received = admin_subscriber(tls_mock, transport="websockets", ca=tls, protocol=mqtt.MQTTv5)
    assert connect(sub, port(tls_mock, key)) == 0
    sub.subscribe(f"over/{key}", qos=1)
    assert received.subscribed.wait(10)
    pub = client(f"pub-{key}", transport="websockets", ca=tls)
    pub.username_pw_set(*mock_creds(tls_mock))
    assert connect(pub, port(tls_mock, key)) == 0
    # Larger than one WebSocket frame of paho's and one read of ours.
    payload = bytes(range(256)) * 1024
    pub.publish(f"over/{key}", payload, qos=1).wait_for_publish(10)
    assert received.got.wait(10)
    assert received.payloads == [payload]
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()


def mock_creds(mock: IotMock) -> tuple[str, str]:
    assert mock.mqtt_credentials
    return mock.mqtt_credentials
