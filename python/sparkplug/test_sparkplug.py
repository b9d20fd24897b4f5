"""The sparkplug-b dialect judged by pysparkplug, a Sparkplug B library
written for the real thing: as a SCADA host that reads a simulated fleet's
births, data and deaths and commands a device, and as an edge node that
reports into iotmock.

pysparkplug needs paho-mqtt 1.x while the iotmock package needs 2.x, so
these tests run in a virtualenv of their own (see `.ci/run`) and drive the
server with its command line and HTTP API only.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pysparkplug as spb
import pytest

REPO = Path(__file__).resolve().parents[2]


def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


class Server:
    """`iotmock serve` on ephemeral ports with a manual clock."""

    def __init__(self, seed: int) -> None:
        binary = os.environ.get("IOTMOCK_BIN") or str(REPO / "target/release/iotmock")
        self.process = subprocess.Popen(
            [binary, "serve", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0",
             "--scenario", "none", "--clock", "manual", "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        assert ready["event"] == "ready", ready
        self.mqtt_port = int(ready["mqtt"].rpartition(":")[2])
        self.http = httpx.Client(base_url=f"http://{ready['http']}/api/v1", timeout=15)

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def advance(self, ms: int) -> None:
        self.call("POST", "/clock/advance", {"ms": ms})

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(seed=7)
    try:
        yield s
    finally:
        s.stop()


class Host:
    """A SCADA host on pysparkplug's client: every message on `spBv1.0/#`,
    decoded by the library (aliases and datatypes from the births it saw)."""

    def __init__(self, port: int) -> None:
        self.messages: list[spb.Message] = []
        self.lock = threading.Lock()
        self.client = spb.Client(client_id="scada-host")
        self.client.subscribe(spb.Topic("#"), spb.QoS.AT_LEAST_ONCE, self._on_message)
        self.client.connect("127.0.0.1", port=port)

    def _on_message(self, _client: spb.Client, message: spb.Message) -> None:
        with self.lock:
            self.messages.append(message)

    def seen(self, kind: spb.MessageType) -> list[spb.Message]:
        with self.lock:
            return [m for m in self.messages if m.topic.message_type == kind]

    def all(self) -> list[spb.Message]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()


def _metric(payload: Any, name: str) -> spb.Metric:
    found = [m for m in payload.metrics if m.name == name]
    assert found, f"no metric {name} in {payload}"
    return found[0]


def test_a_scada_host_reads_the_fleet_commands_a_device_and_sees_its_death(server: Server) -> None:
    host = Host(server.mqtt_port)
    # A host that must not miss a death certificate keeps its session:
    # the broker holds NDEATH (QoS 1) for it through an outage.
    keeper = paho.Client(client_id="scada-keeper", clean_session=False)
    deaths: list[spb.Message] = []
    keeper.on_message = lambda _c, _u, m: deaths.append(spb.Message.from_mqtt_message(m))
    subscribed = threading.Event()
    keeper.on_connect = lambda c, _u, _f, _rc: c.subscribe("spBv1.0/+/NDEATH/+", qos=1)
    keeper.on_subscribe = lambda *_: subscribed.set()
    keeper.connect("127.0.0.1", server.mqtt_port)
    keeper.loop_start()
    try:
        _until(lambda: host.client._client.is_connected() and subscribed.is_set(), "connections")
        time.sleep(0.3)  # the host's SUBACK
        for n in (1, 2):
            server.call("POST", "/devices", {
                "id": f"th-{n}", "group": "plant", "dialect": "sparkplug-b",
                "command_handler": "thermostat",
                "sensors": [{"plugin": "temperature", "interval_ms": 1000},
                            {"plugin": "humidity", "interval_ms": 2000}],
            }, status=201)
        server.advance(30_000)
        _until(lambda: len(host.seen(spb.MessageType.DDATA)) >= 40, "DDATA")

        # Births define the metrics; data decodes by alias to the same names.
        nbirths = host.seen(spb.MessageType.NBIRTH)
        assert sorted(m.topic.edge_node_id for m in nbirths) == ["th-1", "th-2"]
        for m in nbirths:
            assert _metric(m.payload, "bdSeq").value == 0
            assert m.payload.seq == 0
        # The sensors are born (in a new DBIRTH) when they first report.
        names = {m.name for m in host.seen(spb.MessageType.DBIRTH)[-1].payload.metrics}
        assert {"temperature", "humidity", "Command/Id", "Command/Status"} <= names
        readings = [m for d in host.seen(spb.MessageType.DDATA) for m in d.payload.metrics]
        assert {m.name for m in readings} == {"temperature", "humidity"}
        assert all(isinstance(m.value, float) for m in readings)

        # No sequence error: per node, every message but NDEATH is numbered
        # one after the other from the NBIRTH's 0.
        for node in ("th-1", "th-2"):
            seqs = [m.payload.seq for m in host.all()
                    if m.topic.edge_node_id == node and hasattr(m.payload, "seq")
                    and m.topic.message_type not in (spb.MessageType.DCMD, spb.MessageType.NCMD)]
            assert seqs[0] == 0
            assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:])), seqs

        # A DCMD the simulated device acts on: the thermostat's command, in
        # iotmock's commands API, and its answer in the device's DDATA.
        host.client.publish(spb.Message(
            topic=spb.Topic(message_type=spb.MessageType.DCMD, group_id="plant",
                            edge_node_id="th-1", device_id="th-1"),
            payload=spb.DCmd(timestamp=spb.get_current_timestamp(), metrics=(
                spb.Metric(timestamp=spb.get_current_timestamp(), name="set_target",
                           datatype=spb.DataType.STRING, value='{"target": 24.5}'),)),
            qos=spb.QoS.AT_MOST_ONCE, retain=False), include_dtypes=True)
        command = _until(lambda: server.call("GET", "/commands?device=th-1")["items"], "command")[0]
        assert command["name"] == "set_target"
        assert command["params"] == {"target": 24.5}
        server.advance(1_000)
        done = server.call("GET", f"/commands/{command['id']}?wait_ms=5000")
        assert done["status"] == "completed", done
        assert done["result"] == {"target": 24.5}

        def answered() -> bool:
            for d in host.seen(spb.MessageType.DDATA):
                values = {m.name: m.value for m in d.payload.metrics}
                if values.get("Command/Id") == command["id"] and values.get("Command/Status") == "completed":
                    return True
            return False

        _until(answered, "the command's answer in DDATA")

        # An outage: the NDEATH of each node carries the bdSeq of its birth,
        # and reaches the host that kept its session.
        server.call("POST", "/mqtt/outage", {"duration_ms": 500}, status=202)
        _until(lambda: len(deaths) >= 2, "NDEATH after the outage")
        assert sorted(d.topic.edge_node_id for d in deaths) == ["th-1", "th-2"]
        for d in deaths:
            assert d.payload.bd_seq_metric.name == "bdSeq"
            assert d.payload.bd_seq_metric.value == 0

        # Back: the host asks node th-1 for a rebirth (its births were
        # forgotten with its clean session) and gets bdSeq + 1.
        _until(lambda: host.client._client.is_connected(), "host reconnected", timeout=20)
        before = len(host.seen(spb.MessageType.NBIRTH))
        host.client.publish(spb.Message(
            topic=spb.Topic(message_type=spb.MessageType.NCMD, group_id="plant", edge_node_id="th-1"),
            payload=spb.NCmd(timestamp=spb.get_current_timestamp(), metrics=(
                spb.Metric(timestamp=spb.get_current_timestamp(), name="Node Control/Rebirth",
                           datatype=spb.DataType.BOOLEAN, value=True),)),
            qos=spb.QoS.AT_MOST_ONCE, retain=False), include_dtypes=True)
        _until(lambda: len(host.seen(spb.MessageType.NBIRTH)) > before, "rebirth")
        reborn = host.seen(spb.MessageType.NBIRTH)[-1]
        assert reborn.topic.edge_node_id == "th-1"
        assert _metric(reborn.payload, "bdSeq").value == 1
        assert reborn.payload.seq == 0
    finally:
        keeper.loop_stop()
        keeper.disconnect()
        host.stop()


def test_a_pysparkplug_edge_node_reports_into_the_fleet_and_answers_a_command(server: Server) -> None:
    created = server.call("POST", "/devices", {
        "id": "edge-1", "group": "plant", "simulated": False, "dialect": "sparkplug-b",
    }, status=201)
    creds = created["credentials"]
    now = spb.get_current_timestamp()
    commands: list[spb.Message] = []

    def on_dcmd(node: spb.EdgeNode, message: spb.Message) -> None:
        commands.append(message)
        # The device answers in the dialect's command metrics.
        command_id = next(m.value for m in message.payload.metrics if m.name == "Command/Id")
        node.update_device("edge-1", [
            spb.Metric(timestamp=spb.get_current_timestamp(), name="Command/Id",
                       datatype=spb.DataType.STRING, value=command_id),
            spb.Metric(timestamp=spb.get_current_timestamp(), name="Command/Status",
                       datatype=spb.DataType.STRING, value="completed"),
        ])

    node = spb.EdgeNode(
        group_id="plant", edge_node_id="edge-1",
        metrics=[spb.Metric(timestamp=now, name="line/speed", datatype=spb.DataType.DOUBLE, value=1.5)],
        client=spb.Client(client_id="edge-1", username=creds["username"], password=creds["password"]),
    )
    node.register(spb.Device(device_id="edge-1", cmd_callback=on_dcmd, metrics=[
        spb.Metric(timestamp=now, name="temperature", datatype=spb.DataType.DOUBLE, value=20.5),
        spb.Metric(timestamp=now, name="Command/Id", datatype=spb.DataType.STRING, value=""),
        spb.Metric(timestamp=now, name="Command/Status", datatype=spb.DataType.STRING, value=""),
    ]))
    def exported() -> list[dict[str, Any]]:
        text = server.http.get("/telemetry", params={"device": "edge-1", "format": "jsonl"}).text
        return [json.loads(line) for line in text.splitlines() if line]

    node.connect("127.0.0.1", port=server.mqtt_port)
    try:
        _until(lambda: node._client._client.is_connected(), "edge node connected")
        # The library sends its births from its connect callback, which may
        # still be running: a metric changed now could go out in the DBIRTH.
        _until(lambda: any(r["sensor"] == "temperature" for r in exported()), "the births read")
        node.update_device("edge-1", [
            spb.Metric(timestamp=now + 1000, name="temperature", datatype=spb.DataType.DOUBLE, value=21.25)])

        rows = _until(lambda: got if len(got := exported()) >= 3 else None, "exported readings")
        values = {(r["sensor"], r["value"]) for r in rows}
        assert ("line/speed", 1.5) in values, rows
        assert ("temperature", 20.5) in values, rows
        assert ("temperature", 21.25) in values, rows

        # A command from iotmock reaches the node as a DCMD; its answer
        # completes the command.
        sent = server.call("POST", "/devices/edge-1/commands",
                           {"name": "set_speed", "params": {"speed": 2}}, status=202)
        done = server.call("GET", f"/commands/{sent['id']}?wait_ms=10000")
        assert done["status"] == "completed", done
        assert commands and commands[0].topic.device_id == "edge-1"
        written = {m.name: m.value for m in commands[0].payload.metrics}
        assert json.loads(written["set_speed"]) == {"speed": 2}
        assert written["Command/Id"] == sent["id"]
    finally:
        node.disconnect()
