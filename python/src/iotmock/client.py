"""A typed client of the iotmock REST API: one attribute per route group.

`Client` talks to a server that is already running; `IotMock` (in
`server.py`) starts one and is a `Client` too. Resources the API describes
with many fields (devices, edge nodes, stubs, plugins) come back as the
decoded JSON; the objects a test steers or counts (commands, readings, MQTT
messages) are dataclasses. A refused call raises `IotMockError`.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx

from .errors import IotMockError
from .mqtt import Message, Subscription

if TYPE_CHECKING:
    import pandas

JSON = dict[str, Any]
JSONList = list[JSON]
Milliseconds = int | float | timedelta
Time = datetime | str | int

#: Command states after which nothing changes.
FINAL_STATES = frozenset({"completed", "rejected", "failed", "timed_out", "expired", "cancelled"})
#: How long `Command.wait()` and `Batch.wait()` wait when given no timeout, s.
DEFAULT_WAIT_S = 30.0
#: The longest single long-poll the server accepts, ms.
_MAX_POLL_MS = 60_000


def _ms(value: Milliseconds) -> int:
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    return round(value)


def _time(value: Time) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def parse_time(text: str) -> datetime:
    """An RFC 3339 time from the server (Python 3.10 does not read `Z`)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seg(value: str) -> str:
    return quote(value, safe="")


def _query(params: Mapping[str, Any]) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, datetime):
            out[key] = _time(value)
        else:
            out[key] = value
    return out


class Client:
    """The REST API of a running server.

    `http_url` is the server's base URL (`http://127.0.0.1:8080`);
    `mqtt_host` and `mqtt_port` are needed only by `mqtt.subscribe()`.
    """

    http_url: str
    mqtt_host: str | None
    mqtt_port: int | None
    mqtt_credentials: tuple[str, str] | None

    def __init__(
        self,
        http_url: str,
        *,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        mqtt_credentials: tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.http_url = http_url.rstrip("/")
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.mqtt_credentials = mqtt_credentials
        self._http = httpx.Client(base_url=self.http_url, timeout=timeout)
        self._timeout = timeout
        self._baseline: dict[str, set[str]] = {}
        self.mqtt_since = 0
        self.http_since = 0
        self.devices = Devices(self)
        self.commands = Commands(self)
        self.clock = Clock(self)
        self.telemetry = Telemetry(self)
        self.edge = EdgeNodes(self)
        self.stubs = Stubs(self)
        self.plugins = Plugins(self)
        self.mqtt = Mqtt(self)
        # Subscriptions made through `mqtt.subscribe`, synced by
        # `clock.advance(wait_delivered=True)`.
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self.http = HttpJournal(self)

    @property
    def api_url(self) -> str:
        return f"{self.http_url}/api/v1"

    @property
    def mock_url(self) -> str:
        """Where stubs answer on the API port (`/mock` + the stub's path)."""
        return f"{self.http_url}/mock"

    def close(self) -> None:
        self._http.close()

    def health(self) -> JSON:
        """`GET /health`: clock, telemetry, commands and journal counters."""
        return self._obj("GET", "/health")

    def metrics(self) -> str:
        """`GET /metrics`: the Prometheus text."""
        return self._request("GET", "/metrics", api=False).text

    def openapi(self) -> JSON:
        """The OpenAPI document of every route."""
        return self._obj("GET", "/openapi.json")

    def ca_pem(self) -> str:
        """`GET /ca.pem`: the built-in CA certificate (trust it for the TLS listeners)."""
        return self._request("GET", "/ca.pem").text

    def device_api(self, device_id: str, password: str) -> DeviceApi:
        """The HTTP device API as device `device_id` (its own credentials)."""
        return DeviceApi(self, device_id, password)

    def snapshot(self) -> None:
        """Remembers what exists now, so `reset()` keeps it and removes the rest."""
        self._baseline = {
            "devices": {d["id"] for d in self.devices.list()},
            "edge": {n["id"] for n in self.edge.list()},
            "stubs": {s["id"] for s in self.stubs.list()},
        }
        self.mqtt_since = self.http_since = 0

    def reset(self) -> None:
        """Brings the server back to the last `snapshot()` where the API allows.

        Removes the devices, edge nodes, stubs and uploaded plugins added
        since, waits out a running MQTT outage, and moves the journal
        baselines so `messages()`, `requests()` and both `verify()` calls
        see only what happens from now on. The clock only moves forward,
        and commands and journals are not deleted.
        """
        keep = self._baseline
        for node in self.edge.list():
            if node["id"] not in keep.get("edge", set()):
                self.edge.delete(node["id"])
        for device_id in [d["id"] for d in self.devices.list()]:
            if device_id not in keep.get("devices", set()):
                self.devices.delete(device_id)
        for stub in self.stubs.list():
            if stub["id"] not in keep.get("stubs", set()):
                self.stubs.delete(stub["id"])
        for plugin in self.plugins.list():
            if (plugin.get("source") or {}).get("kind") == "api":
                self.plugins.delete(plugin["name"])
        status = self.mqtt.status()
        while status["state"] == "outage":
            time.sleep(min(0.05 + (status.get("remaining_ms") or 0) / 1000, 1.0))
            status = self.mqtt.status()
        self.mqtt_since = int(status["journal"]["cursor"])
        self.http_since = self.http.cursor()

    def _request(
        self,
        method: str,
        path: str,
        *,
        api: bool = True,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        __tracebackhide__ = True
        url = f"/api/v1{path}" if api else path
        response = self._http.request(
            method,
            url,
            json=json,
            params=_query(params or {}),
            content=content,
            headers=headers,
            auth=auth,
            timeout=timeout if timeout is not None else self._timeout,
        )
        if response.is_error:
            raise _problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    def _obj(self, method: str, path: str, **kwargs: Any) -> JSON:
        __tracebackhide__ = True
        view: JSON = self._json(method, path, **kwargs)
        return view

    def _items(self, path: str) -> JSONList:
        """The `items` of a listing that comes in one page."""
        items: JSONList = self._json("GET", path)["items"]
        return items


def _problem(response: httpx.Response) -> IotMockError:
    request = response.request
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and "status" in body:
        return IotMockError(
            int(body.get("status", response.status_code)),
            str(body.get("title", response.reason_phrase)),
            str(body.get("detail", "")),
            type=str(body.get("type", "about:blank")),
            method=request.method,
            url=str(request.url),
            body=body,
        )
    return IotMockError(
        response.status_code,
        response.reason_phrase,
        str(body)[:500],
        method=request.method,
        url=str(request.url),
        body=body,
    )


class _Group:
    def __init__(self, client: Client) -> None:
        self._client = client


# --- devices -------------------------------------------------------------


class Devices(_Group):
    """Provisioning, lifecycle, credentials and connectivity."""

    def create(self, id: str, **fields: Any) -> JSON:
        """`POST /devices`; the answer carries the credentials (the password only here)."""
        return self._client._obj("POST", "/devices", json={"id": id, **fields})

    def bulk(
        self, count: int, id_pattern: str, template: Mapping[str, Any] | None = None, **fields: Any
    ) -> JSON:
        """`POST /devices/bulk`: `count` devices named by `id_pattern` (`dev-{n:05}`), all or none."""
        body = {"count": count, "id_pattern": id_pattern, **fields}
        if template is not None:
            body["template"] = dict(template)
        return self._client._obj("POST", "/devices/bulk", json=body)

    def list(self, *, page_size: int | None = None, **filters: Any) -> Iterator[JSON]:
        """Every device matching `tag`, `group`, `state`, `connectivity`, following the cursors."""
        cursor: str | None = None
        while True:
            page = self._client._json(
                "GET", "/devices", params={**filters, "limit": page_size, "cursor": cursor}
            )
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get(self, id: str) -> JSON:
        return self._client._obj("GET", f"/devices/{_seg(id)}")

    def patch(self, id: str, **fields: Any) -> JSON:
        """`PATCH /devices/{id}`: `state`, `tags`, `group`, `metadata`, `buffer`, `dialect`, ..."""
        return self._client._obj("PATCH", f"/devices/{_seg(id)}", json=fields)

    def delete(self, id: str) -> None:
        self._client._request("DELETE", f"/devices/{_seg(id)}")

    def rotate_credentials(self, id: str) -> JSON:
        """A new secret; the answer is the only place the password is shown."""
        return self._client._obj("POST", f"/devices/{_seg(id)}/credentials")

    def connectivity(self, id: str, state: Literal["online", "offline", "flaky"], **fields: Any) -> JSON:
        """Takes a simulated device online, offline or flaky (`mean_online_ms`, `mean_offline_ms`)."""
        return self._client._obj("POST", f"/devices/{_seg(id)}/connectivity", json={"state": state, **fields})

    def issue_certificate(self, id: str, **fields: Any) -> JSON:
        """A client certificate (CN = the device id): `valid_days`, `csr`, `not_before`, `not_after`.

        The answer has `certificate`, `serial`, `ca`, and `private_key` when the
        key was made for you (shown only here).
        """
        return self._client._obj("POST", f"/devices/{_seg(id)}/certificates", json=fields)

    def certificates(self, id: str) -> JSONList:
        """The device's certificates with their `status` (valid, expired, revoked)."""
        return self._client._items(f"/devices/{_seg(id)}/certificates")

    def revoke_certificate(self, id: str, serial: str) -> None:
        """Every TLS listener refuses the certificate from now on."""
        self._client._request("DELETE", f"/devices/{_seg(id)}/certificates/{_seg(serial)}")


class DeviceApi:
    """The routes a device calls with its own credentials (HTTP basic auth)."""

    def __init__(self, client: Client, device_id: str, password: str) -> None:
        self._client = client
        self.device_id = device_id
        self._auth = (device_id, password)
        self._path = f"/devices/{_seg(device_id)}"

    def send_telemetry(self, readings: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> JSON:
        """One reading `{"sensor","value","unit"?,"ts"?}` or a list; → `{"accepted","held"}`."""
        body = dict(readings) if isinstance(readings, Mapping) else [dict(r) for r in readings]
        return self._client._obj("POST", f"{self._path}/telemetry", json=body, auth=self._auth)

    def state(self) -> JSON:
        """The reported state."""
        return self._client._obj("GET", f"{self._path}/state", auth=self._auth)

    def replace_state(self, state: Mapping[str, Any]) -> JSON:
        return self._client._obj("PUT", f"{self._path}/state", json=dict(state), auth=self._auth)

    def update_state(self, patch: Mapping[str, Any]) -> JSON:
        """Merges `patch` (RFC 7396: None removes a key)."""
        return self._client._obj("PATCH", f"{self._path}/state", json=dict(patch), auth=self._auth)

    def next_command(self, wait: Milliseconds = 0) -> JSON | None:
        """Long-polls (wall time) for the next command; None when none came."""
        wait_ms = _ms(wait)
        response = self._client._request(
            "GET",
            f"{self._path}/commands/next",
            params={"wait_ms": wait_ms},
            auth=self._auth,
            timeout=wait_ms / 1000 + self._client._timeout,
        )
        return None if response.status_code == 204 else response.json()

    def ack(self, command_id: str, status: str, result: Any = None) -> JSON:
        """Answers a command: `received`, `completed`, `rejected` or `failed`."""
        body: JSON = {"status": status}
        if result is not None:
            body["result"] = result
        return self._client._obj("POST", f"{self._path}/acks/{_seg(command_id)}", json=body, auth=self._auth)


# --- commands ------------------------------------------------------------


def _still_running(client: Client, what: str, status: str, timeout: float) -> TimeoutError:
    hint = ""
    try:
        if client.clock.now()["mode"] == "manual":
            hint = "; the clock is manual: advance it (clock.advance) for simulated time to pass"
    except (IotMockError, httpx.HTTPError):
        pass
    return TimeoutError(f"{what} is still {status} after {timeout:g} s{hint}")


@dataclass
class Command:
    """A command and what happened to it; `wait()` follows it to a final state."""

    id: str
    device: str
    name: str
    status: str
    attempts: int
    params: Any = None
    result: Any = None
    reason: str | None = None
    history: JSONList = field(default_factory=list)
    acks: JSONList = field(default_factory=list)
    raw: JSON = field(default_factory=dict, repr=False)
    _client: Client | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, view: JSON, client: Client | None = None) -> Command:
        return cls(
            id=view["id"],
            device=view["device"],
            name=view["name"],
            status=view["status"],
            attempts=view.get("attempts", 0),
            params=view.get("params"),
            result=view.get("result"),
            reason=view.get("reason"),
            history=view.get("history", []),
            acks=view.get("acks", []),
            raw=view,
            _client=client,
        )

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def _bound(self) -> Client:
        if self._client is None:
            raise RuntimeError("this Command was made without a client; use commands.get(id)")
        return self._client

    def _take(self, other: Command) -> Command:
        for name in ("status", "attempts", "params", "result", "reason", "history", "acks", "raw"):
            setattr(self, name, getattr(other, name))
        return self

    def refresh(self) -> Command:
        return self._take(self._bound().commands.get(self.id))

    def wait(self, timeout: float | None = None) -> Command:
        """Waits (wall time, `timeout` s, default 30) for a final state and
        returns this command, updated; raises TimeoutError if none came."""
        __tracebackhide__ = True
        client = self._bound()
        limit = DEFAULT_WAIT_S if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self.final:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise _still_running(client, f"command {self.id}", self.status, limit)
            self._take(client.commands.get(self.id, wait=min(left_ms, _MAX_POLL_MS)))
        return self

    def cancel(self) -> Command:
        return self._take(self._bound().commands.cancel(self.id))


@dataclass
class Batch:
    """A fleet command: one command per selected device and a summary per status."""

    id: str
    name: str
    summary: dict[str, int]
    total: int
    done: bool
    commands: JSONList
    raw: JSON = field(default_factory=dict, repr=False)
    _client: Client | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, view: JSON, client: Client | None = None) -> Batch:
        return cls(
            id=view["id"],
            name=view["name"],
            summary=view.get("summary", {}),
            total=view.get("total", 0),
            done=view.get("done", False),
            commands=view.get("commands", []),
            raw=view,
            _client=client,
        )

    def by_device(self) -> dict[str, JSON]:
        return {c["device"]: c for c in self.commands}

    def wait(self, timeout: float | None = None) -> Batch:
        """Waits (wall time, default 30 s) until every command is final."""
        __tracebackhide__ = True
        if self._client is None:
            raise RuntimeError("this Batch was made without a client; use commands.batch(id)")
        limit = DEFAULT_WAIT_S if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self.done:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise _still_running(
                    self._client, f"fleet command {self.id}", f"not done ({self.summary})", limit
                )
            fresh = self._client.commands.batch(self.id, wait=min(left_ms, _MAX_POLL_MS))
            self.summary, self.total, self.done = fresh.summary, fresh.total, fresh.done
            self.commands, self.raw = fresh.commands, fresh.raw
        return self


def _selection(selector: Mapping[str, Any] | Sequence[str] | str) -> JSON:
    if selector == "all":
        return {"all": True}
    if isinstance(selector, str):
        raise ValueError(
            f"selector {selector!r}: use 'all', a list of device ids, or {{'tag'|'group'|'ids': ...}}"
        )
    if isinstance(selector, Mapping):
        return dict(selector)
    return {"ids": list(selector)}


class Commands(_Group):
    """Commands to one device or a selection of the fleet."""

    def send(
        self, device_id: str, name: str, params: Mapping[str, Any] | None = None, **options: Any
    ) -> Command:
        """`POST /devices/{id}/commands`; options: `id`, `timeout_ms`, `retries`,
        `backoff_ms`, `ttl_ms`, `complete_on`."""
        body = {"name": name, **options}
        if params is not None:
            body["params"] = dict(params)
        view = self._client._json("POST", f"/devices/{_seg(device_id)}/commands", json=body)
        return Command.from_json(view, self._client)

    def send_fleet(
        self,
        selector: Mapping[str, Any] | Sequence[str] | str,
        name: str,
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Batch:
        """`POST /commands`: `selector` is `{"tag": t}`, `{"group": g}`, a list of ids, or "all"."""
        body = {"devices": _selection(selector), "name": name, **options}
        if params is not None:
            body["params"] = dict(params)
        return Batch.from_json(self._client._json("POST", "/commands", json=body), self._client)

    def get(self, id: str, *, wait: Milliseconds | None = None) -> Command:
        """A command; with `wait`, long-polls (wall time, at most 60 s) until it is final."""
        wait_ms = None if wait is None else _ms(wait)
        view = self._client._json(
            "GET",
            f"/commands/{_seg(id)}",
            params={"wait_ms": wait_ms},
            timeout=(wait_ms or 0) / 1000 + self._client._timeout,
        )
        return Command.from_json(view, self._client)

    def list(self, *, page_size: int | None = None, **filters: Any) -> Iterator[Command]:
        """Commands matching `device`, `status`, `name`, `batch`, oldest first, every page."""
        cursor: str | None = None
        while True:
            page = self._client._json(
                "GET", "/commands", params={**filters, "limit": page_size, "cursor": cursor}
            )
            for view in page["items"]:
                yield Command.from_json(view, self._client)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, id: str) -> Command:
        """Cancels a command that is still queued."""
        return Command.from_json(self._client._json("POST", f"/commands/{_seg(id)}/cancel"), self._client)

    def batch(self, id: str, *, wait: Milliseconds | None = None) -> Batch:
        """A fleet command; with `wait`, long-polls until every command is final."""
        wait_ms = None if wait is None else _ms(wait)
        view = self._client._json(
            "GET",
            f"/commands/batches/{_seg(id)}",
            params={"wait_ms": wait_ms},
            timeout=(wait_ms or 0) / 1000 + self._client._timeout,
        )
        return Batch.from_json(view, self._client)


# --- clock ---------------------------------------------------------------


class Clock(_Group):
    """Simulated time."""

    def now(self) -> JSON:
        """`{"mode","now","now_ms"}`."""
        return self._client._obj("GET", "/clock")

    def advance(
        self,
        step: Milliseconds,
        *,
        wait_delivered: bool = False,
        wait_timeout: Milliseconds | None = None,
    ) -> JSON:
        """Moves a manual clock by `step` (ms, or a timedelta); answers once
        the span's readings, edge windows and command events have happened.

        With `wait_delivered`, also once every MQTT message of the span has
        reached every connected subscriber (written to its socket for QoS 0,
        acknowledged for QoS 1/2), and this client's open `mqtt.subscribe()`
        blocks have them in `messages` (`Subscription.sync`);
        past `wait_timeout` (default 10 s) it raises `IotMockError` (504)
        naming the clients still waiting."""
        body: dict[str, Any] = {"ms": _ms(step)}
        if wait_delivered:
            body["wait_delivered"] = True
        if wait_timeout is not None:
            body["wait_timeout_ms"] = _ms(wait_timeout)
        answer = self._client._obj(
            "POST", "/clock/advance", json=body, timeout=max(self._client._timeout, 300.0)
        )
        if wait_delivered:
            # What the broker wrote to the sockets of this client's open
            # subscriptions is in their `messages` too (QoS 0 has no ack
            # the broker could wait for).
            for subscription in list(self._client._subscriptions):
                subscription.sync()
        return answer


# --- telemetry -----------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One published reading (or, with dropouts included, one the model left out)."""

    device: str
    sensor: str
    ts: datetime
    value: float | None
    unit: str | None = None
    anomaly: str | None = None
    #: The reading's sequence number in the telemetry journal (stream only).
    id: int | None = None

    @classmethod
    def from_json(cls, data: JSON, id: int | None = None) -> Reading:
        return cls(
            device=data["device"],
            sensor=data["sensor"],
            ts=parse_time(data["ts"]),
            value=data.get("value"),
            unit=data.get("unit"),
            anomaly=data.get("anomaly"),
            id=id,
        )


class Telemetry(_Group):
    """The export of recent readings and the live stream."""

    def export(
        self,
        *,
        device: str | None = None,
        sensor: str | None = None,
        since: Time | None = None,
        until: Time | None = None,
        include_dropouts: bool = False,
        page_size: int | None = None,
    ) -> list[Reading]:
        """Readings from the journal, oldest first, every page; `since`
        (inclusive) and `until` (exclusive) are simulated times."""
        params: JSON = {
            "device": device,
            "sensor": sensor,
            "since": None if since is None else _time(since),
            "until": None if until is None else _time(until),
            "include": "dropouts" if include_dropouts else None,
            "limit": page_size,
            "format": "jsonl",
        }
        readings: list[Reading] = []
        while True:
            response = self._client._request("GET", "/telemetry", params=params)
            readings.extend(
                Reading.from_json(json.loads(line)) for line in response.text.splitlines() if line
            )
            cursor = response.headers.get("x-next-cursor")
            if not cursor:
                return readings
            params["cursor"] = cursor

    def dataframe(self, **filters: Any) -> pandas.DataFrame:
        """`export()` as a pandas DataFrame (columns device, sensor, ts, value, unit, anomaly)."""
        try:
            import pandas
        except ImportError as e:
            raise ImportError("telemetry.dataframe() needs pandas: pip install 'iotmock[pandas]'") from e
        rows = [
            {
                "device": r.device,
                "sensor": r.sensor,
                "ts": r.ts,
                "value": r.value,
                "unit": r.unit,
                "anomaly": r.anomaly,
            }
            for r in self.export(**filters)
        ]
        columns = ["device", "sensor", "ts", "value", "unit", "anomaly"]
        return pandas.DataFrame(rows, columns=columns)

    def stream(
        self,
        *,
        device: str | None = None,
        sensor: str | None = None,
        include_dropouts: bool = False,
        queue: int | None = None,
        after: int | None = None,
        timeout: float = 30.0,
    ) -> TelemetryStream:
        """The live stream as a context manager that iterates `Reading`s.

        Subscribed when the `with` block starts; a dropped connection is
        resumed after the last reading seen (`after` resumes an earlier
        stream). Iterating raises TimeoutError after `timeout` s without a reading.
        """
        params = {
            "device": device,
            "sensor": sensor,
            "include": "dropouts" if include_dropouts else None,
            "queue": queue,
        }
        return TelemetryStream(self._client, params, after=after, timeout=timeout)


class TelemetryStream:
    """Server-sent readings, read on a thread of its own into a queue.

    `missed` counts readings the server dropped for this client (its queue
    was full); `gaps` lists the `gap` events of a resume that came too late.
    """

    def __init__(self, client: Client, params: JSON, *, after: int | None, timeout: float) -> None:
        self._client = client
        self._params = params
        #: The id of the last reading handed out: `after=` for a later stream.
        self.last_id = after
        self._received_id = after
        self.timeout = timeout
        self.missed = 0
        self.gaps: JSONList = []
        self.reconnects = 0
        self._items: queue.Queue[object] = queue.Queue()
        self._closed = threading.Event()
        self._response: httpx.Response | None = None
        self._thread: threading.Thread | None = None
        # A connection pool of its own: the stream is closed from another
        # thread than the one reading it, which the shared pool must not see.
        self._http = httpx.Client(base_url=client.http_url, timeout=httpx.Timeout(10.0, read=None))

    def __enter__(self) -> TelemetryStream:
        self._open()
        self._thread = threading.Thread(target=self._run, name="iotmock-stream", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._disconnect()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http.close()

    def _disconnect(self) -> None:
        """Ends the connection under the reading thread: a socket shutdown
        wakes a blocked read, where closing the response would not."""
        response = self._response
        if response is None:
            return
        network = response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if sock is None:
            response.close()
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __iter__(self) -> Iterator[Reading]:
        return self

    def __next__(self) -> Reading:
        item = self._get(self.timeout)
        if item is None:
            raise TimeoutError(f"no reading on the telemetry stream for {self.timeout:g} s")
        return item

    def take(self, count: int, timeout: float | None = None) -> list[Reading]:
        """The next `count` readings; TimeoutError if they do not all come within `timeout` s."""
        __tracebackhide__ = True
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        readings: list[Reading] = []
        while len(readings) < count:
            item = self._get(max(0.0, deadline - time.monotonic()))
            if item is None:
                raise TimeoutError(
                    f"got {len(readings)} of {count} readings from the telemetry stream in time"
                )
            readings.append(item)
        return readings

    def _get(self, timeout: float) -> Reading | None:
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Reading)
        self.last_id = item.id
        return item

    def _open(self) -> None:
        headers = {"accept": "text/event-stream"}
        if self._received_id is not None:
            headers["last-event-id"] = str(self._received_id)
        request = self._http.build_request(
            "GET", "/api/v1/telemetry/stream", params=_query(self._params), headers=headers
        )
        response = self._http.send(request, stream=True)
        if response.is_error:
            response.read()
            raise _problem(response)
        self._response = response
        self._lines = response.iter_lines()
        # The first line is the ": subscribed" comment: from here on nothing is missed.
        next(self._lines, None)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._pump()
            except (httpx.TransportError, httpx.StreamError):
                pass
            if self._response is not None:
                self._response.close()
            # The connection ended: resume after the last reading received.
            failures = 0
            while not self._closed.is_set():
                time.sleep(0.1)
                try:
                    self._open()
                    self.reconnects += 1
                    break
                except (httpx.TransportError, IotMockError) as e:
                    failures += 1
                    if failures == 50:
                        self._items.put(e)
                        return
        if self._response is not None:
            self._response.close()

    def _pump(self) -> None:
        event, data, event_id = "message", [], None
        for line in self._lines:
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = int(value)
                continue
            payload = json.loads("\n".join(data)) if data else {}
            if event == "reading":
                if event_id is not None:
                    self._received_id = event_id
                self._items.put(Reading.from_json(payload, id=event_id))
            elif event == "missed":
                self.missed += int(payload.get("missed", 0))
            elif event == "gap":
                self.gaps.append(payload)
            event, data, event_id = "message", [], None


# --- edge nodes ----------------------------------------------------------


class EdgeNodes(_Group):
    """Edge nodes: rule pipelines over a group of devices, with an uplink."""

    def create(
        self,
        id: str,
        devices: Mapping[str, Any] | Sequence[str],
        rules: Sequence[Mapping[str, Any]],
        **fields: Any,
    ) -> JSON:
        """`devices` is `{"tag"|"group"|"ids": ...}` or a list of ids; `rules`
        are `{"plugin","config"}`; fields: `window_ms`, `buffer`, `budget`, `on_error`."""
        members = dict(devices) if isinstance(devices, Mapping) else {"ids": list(devices)}
        body = {"id": id, "devices": members, "rules": [dict(r) for r in rules], **fields}
        return self._client._obj("POST", "/edge-nodes", json=body)

    def list(self) -> JSONList:
        return self._client._items("/edge-nodes")

    def get(self, id: str) -> JSON:
        """The node with its counters (`readings`, `uplink`, `latency`, ...)."""
        return self._client._obj("GET", f"/edge-nodes/{_seg(id)}")

    def delete(self, id: str) -> None:
        self._client._request("DELETE", f"/edge-nodes/{_seg(id)}")

    def uplink(self, id: str, state: Literal["up", "down"]) -> JSON:
        """Takes the uplink down (output is buffered) or up (the buffer is flushed first)."""
        return self._client._obj("POST", f"/edge-nodes/{_seg(id)}/uplink", json={"state": state})


# --- stubs and the HTTP journal -----------------------------------------


class Stubs(_Group):
    """Mock HTTP endpoints."""

    def add(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> JSON:
        """`POST /stubs` with `spec` and/or fields: `id`, `request`,
        `response` or `responses`, `delay_ms`, `priority`, `after_last`."""
        return self._client._obj("POST", "/stubs", json={**(spec or {}), **fields})

    def list(self) -> JSONList:
        return self._client._items("/stubs")

    def get(self, id: str) -> JSON:
        return self._client._obj("GET", f"/stubs/{_seg(id)}")

    def delete(self, id: str) -> None:
        self._client._request("DELETE", f"/stubs/{_seg(id)}")

    def clear(self) -> None:
        """Removes every stub (the scenario's until the next start)."""
        self._client._request("DELETE", "/stubs")

    def url(self, path: str) -> str:
        """Where a stub for `path` answers on the API port."""
        return f"{self._client.mock_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Calls the stubs as a client under test would (`/mock/{path}`); any
        status comes back as a response, not an exception."""
        return self._client._http.request(method, self.url(path), **kwargs)


class HttpJournal(_Group):
    """The journal of requests to stubs and to the device API."""

    def requests(
        self, *, since: int | str | None = None, page_size: int | None = None, **filters: Any
    ) -> JSONList:
        """Journaled requests matching `method`, `path`, `stub`, `device`,
        `unmatched`; after `since` (default: the last `reset()`), every page."""
        cursor: int | str = self._client.http_since if since is None else since
        items: JSONList = []
        while True:
            page = self._client._json(
                "GET", "/http/requests", params={**filters, "since": cursor, "limit": page_size}
            )
            items.extend(page["items"])
            if not page["items"] or page["next_cursor"] == cursor:
                return items
            cursor = page["next_cursor"]

    def cursor(self) -> int:
        """The journal's cursor now: pass it as `since` to see only later requests."""
        return int(self._client.health()["http_journal"]["cursor"])

    def verify(self, *, within: Milliseconds = 0, since: int | None = None, **spec: Any) -> JSON:
        """`POST /http/verify` (`method`, `path`, `stub`, `device`, `query`,
        `headers`, `body_contains`, `at_least`|`at_most`|`exactly`, default
        at_least=1); raises AssertionError with the near misses if it fails."""
        __tracebackhide__ = True
        body = _expectation(spec)
        body.update(within_ms=_ms(within), since=self._client.http_since if since is None else since)
        result: JSON = self._client._json(
            "POST", "/http/verify", json=body, timeout=_ms(within) / 1000 + self._client._timeout
        )
        if not result["passed"]:
            raise AssertionError(_verify_failure("HTTP", body, result))
        return result


# --- plugins -------------------------------------------------------------


class Plugins(_Group):
    """WebAssembly plugins: list, upload (hot reload), delete."""

    def list(self) -> JSONList:
        return self._client._items("/plugins")

    def get(self, name: str) -> JSON:
        return self._client._obj("GET", f"/plugins/{_seg(name)}")

    def upload(self, name: str, component: str | os.PathLike[str] | bytes) -> JSON:
        """Installs a component (a path to a `.wasm` file, or its bytes) as `name`."""
        data = component if isinstance(component, bytes) else Path(component).read_bytes()
        return self._client._obj(
            "PUT",
            f"/plugins/{_seg(name)}",
            content=data,
            headers={"content-type": "application/wasm"},
            timeout=max(self._client._timeout, 120.0),
        )

    def delete(self, name: str) -> None:
        self._client._request("DELETE", f"/plugins/{_seg(name)}")


# --- MQTT ----------------------------------------------------------------


class Mqtt(_Group):
    """The broker: the journal, publishing as the server, outages, clients."""

    def publish(self, topic: str, payload: Any, *, qos: int = 0, retain: bool = False) -> str:
        """Publishes as the server; a str is sent as its text, anything else
        as JSON. Returns `routed`, `held` or `dropped`."""
        if isinstance(payload, bytes):
            payload = payload.decode()
        body = {"topic": topic, "payload": payload, "qos": qos, "retain": retain}
        return str(self._client._json("POST", "/mqtt/publish", json=body)["outcome"])

    def messages(
        self, topic: str | None = None, *, since: int | None = None, page_size: int | None = None
    ) -> list[Message]:
        """Journaled messages matching the filter `topic`, after `since`
        (default: the last `reset()`), every page, oldest first."""
        cursor = self._client.mqtt_since if since is None else since
        messages: list[Message] = []
        while True:
            page = self._client._json(
                "GET", "/mqtt/messages", params={"topic": topic, "since": cursor, "limit": page_size}
            )
            messages.extend(_message(item) for item in page["items"])
            if not page["items"] or page["next_cursor"] == cursor:
                return messages
            cursor = page["next_cursor"]

    def verify(
        self,
        topic: str,
        payload_contains: Any = None,
        *,
        at_least: int | None = None,
        at_most: int | None = None,
        exactly: int | None = None,
        within: Milliseconds = 0,
        since: int | None = None,
    ) -> JSON:
        """`POST /mqtt/verify` (default at_least=1, since the last `reset()`);
        raises AssertionError with the near misses if it fails."""
        __tracebackhide__ = True
        body = _expectation(
            {
                "topic": topic,
                "payload_contains": payload_contains,
                "at_least": at_least,
                "at_most": at_most,
                "exactly": exactly,
            }
        )
        body.update(within_ms=_ms(within), since=self._client.mqtt_since if since is None else since)
        result: JSON = self._client._json(
            "POST", "/mqtt/verify", json=body, timeout=_ms(within) / 1000 + self._client._timeout
        )
        if not result["passed"]:
            raise AssertionError(_verify_failure("MQTT", body, result))
        return result

    def outage(self, duration: Milliseconds) -> JSON:
        """Stops the broker for `duration` (ms or timedelta); clients are disconnected."""
        return self._client._obj("POST", "/mqtt/outage", json={"duration_ms": _ms(duration)})

    def fault(self, action: str, *, match: dict[str, Any] | None = None, **options: Any) -> JSON:
        """Adds a packet fault rule, e.g.
        `fault("withhold_ack", match={"client": "fw-*", "packet": "puback"}, count=1)`.
        Options: probability, count, after, delay_ms, jitter_ms, reason_code,
        bytes_per_sec. Returns the rule with its `id`."""
        body: dict[str, Any] = {"action": action, **options}
        if match is not None:
            body["match"] = match
        return self._client._obj("POST", "/mqtt/faults", json=body)

    def faults(self, *, since: int = 0) -> JSON:
        """`{"rules":[...with matched and fired...],"log":[...],"log_evicted"}`."""
        return self._client._obj("GET", "/mqtt/faults", params={"since": since})

    def drops(self, *, since: int = 0) -> JSON:
        """Messages the broker did not deliver: `{"items":[{"seq","sim_time",
        "client_id","topic","qos","reason"}],"evicted"}`; `reason` is
        `queue_full`, `expired`, `too_large` or `fault`."""
        return self._client._obj("GET", "/mqtt/drops", params={"since": since})

    def delete_fault(self, id: str) -> None:
        """Removes one fault rule."""
        self._client._request("DELETE", f"/mqtt/faults/{_seg(id)}")

    def clear_faults(self) -> None:
        """Removes every fault rule."""
        self._client._request("DELETE", "/mqtt/faults")

    def clients(self) -> JSONList:
        """Connected clients with their subscriptions."""
        clients: JSONList = self._client._json("GET", "/mqtt/clients")
        return clients

    def status(self) -> JSON:
        """`{"state","clients","journal":{"cursor",...},"outage_policy",...}`."""
        return self._client._obj("GET", "/mqtt/status")

    def cursor(self) -> int:
        """The journal's cursor now: pass it as `since` to see only later messages."""
        return int(self.status()["journal"]["cursor"])

    def subscribe(self, topic: str, *, qos: int = 0, timeout: float = 10.0) -> Subscription:
        """A paho-mqtt client subscribed to `topic` while the `with` block
        runs, collecting what arrives (`messages`, `wait_for(n)`)."""
        client = self._client
        if client.mqtt_host is None or client.mqtt_port is None:
            raise RuntimeError("subscribe() needs the broker's address: give Client mqtt_host and mqtt_port")
        subscription = Subscription(
            client.mqtt_host,
            client.mqtt_port,
            topic,
            qos=qos,
            timeout=timeout,
            credentials=client.mqtt_credentials,
        )
        client._subscriptions.add(subscription)
        return subscription


def _message(item: JSON) -> Message:
    raw = item["payload"]
    payload = base64.b64decode(raw) if item.get("payload_encoding") == "base64" else str(raw).encode()
    return Message(
        topic=item["topic"],
        payload=payload,
        qos=item.get("qos", 0),
        retain=item.get("retain", False),
        client_id=item.get("client_id"),
        cursor=item.get("cursor"),
        sim_time=item.get("sim_time"),
    )


def _expectation(spec: Mapping[str, Any]) -> JSON:
    body = {k: v for k, v in spec.items() if v is not None}
    if not {"at_least", "at_most", "exactly"} & body.keys():
        body["at_least"] = 1
    return body


def _verify_failure(kind: str, request: JSON, result: JSON) -> str:
    shown = {k: v for k, v in request.items() if k != "since"}
    lines = [
        f"{kind} verify failed: {result.get('detail') or 'expectation not met'}",
        f"  expected: {json.dumps(shown, sort_keys=True)}",
        f"  waited {result.get('waited_ms')} ms; journal cursor {result.get('cursor')}"
        " (pass it as since= to look only later)",
    ]
    misses = result.get("near_misses") or []
    if misses:
        lines.append(f"  near misses ({len(misses)}, selected but not matching):")
        lines.extend(_near_miss(miss) for miss in misses)
    else:
        lines.append("  no near misses: nothing the selection picked came close")
    return "\n".join(lines)


def _near_miss(item: Any) -> str:
    """One journal entry: a header line, then its payload or body (JSON pretty-printed)."""
    if not isinstance(item, dict):
        return "    - " + json.dumps(item)
    if "topic" in item:
        head = (
            f"{item['topic']}  (qos {item.get('qos')}, retain {item.get('retain')},"
            f" client {item.get('client_id')})"
        )
        body, encoding, extra = item.get("payload"), item.get("payload_encoding"), ""
    else:
        query = "&".join(f"{k}={v}" for k, v in (item.get("query") or {}).items())
        target = f"{item.get('path')}?{query}" if query else item.get("path")
        head = f"{item.get('method')} {target}  -> {item.get('status')} (stub {item.get('stub')})"
        body, encoding = item.get("body"), item.get("body_encoding")
        extra = "\n      headers: " + json.dumps(item.get("headers") or {}, sort_keys=True)
    head += f", cursor {item.get('cursor')}, simulated {item.get('sim_time')}"
    text = "" if body is None else str(body)
    if encoding != "base64":
        try:
            text = json.dumps(json.loads(text), indent=2, sort_keys=True)
        except ValueError:
            pass
    return f"    - {head}{extra}\n      " + text.replace("\n", "\n      ")
