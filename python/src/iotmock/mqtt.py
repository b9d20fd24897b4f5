"""MQTT messages, and a paho-mqtt subscription that collects them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode


@dataclass(frozen=True)
class Message:
    """One MQTT message: from the journal (`cursor`, `client_id`, `sim_time`
    set) or received by a subscription."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    client_id: str | None = None
    cursor: int | None = None
    sim_time: str | None = None

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscription:
    """A paho-mqtt client subscribed to one topic filter.

    Entering the `with` block connects and returns once the broker granted
    the subscription, so nothing published after it is missed; leaving it
    disconnects. `messages` holds what arrived, in order.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        qos: int = 0,
        timeout: float = 10.0,
        credentials: tuple[str, str] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.topic = topic
        self.qos = qos
        self.timeout = timeout
        self.messages: list[Message] = []
        self._host, self._port = host, port
        self._arrived = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._open = False
        client_id = client_id or f"iotmock-py-{uuid.uuid4().hex[:12]}"
        # The topic `sync()` sends itself a marker on (subscribed on first use).
        self._sync_topic = f"iotmock-py/sync/{client_id}"
        self._sync_acked = threading.Event()
        self._sync_asked = False
        self._sync_failed = False
        self._synced: set[str] = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if credentials is not None:
            self.client.username_pw_set(*credentials)
        # Back soon after a broker outage (paho's default waits up to 120 s).
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def __enter__(self) -> Subscription:
        deadline = time.monotonic() + self.timeout
        while True:
            # Refused while the broker is in an outage: try again until it is back.
            try:
                self.client.connect(self._host, self._port)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.client.loop_start()
        if not self._connected.wait(max(0.0, deadline - time.monotonic())) or self._refused:
            self.__exit__()
            raise ConnectionError(
                f"MQTT connect to {self._host}:{self._port}: {self._refused or 'no CONNACK in time'}"
            )
        self.client.subscribe(self.topic, qos=self.qos)
        if not self._subscribed.wait(self.timeout) or self._refused:
            self.__exit__()
            raise ConnectionError(f"MQTT subscribe to {self.topic!r}: {self._refused or 'no SUBACK in time'}")
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        self.client.disconnect()
        self.client.loop_stop()

    def sync(self, timeout: float = 2.0) -> bool:
        """Returns once every message the broker wrote to this connection
        before the call is in `messages`: the client sends itself a marker
        and waits for it to come back behind them (paho hands messages over
        in the order they arrived). `clock.advance(wait_delivered=True)` does
        this for every open subscription, so QoS 0 messages are complete too.
        False when the marker did not come back within `timeout` (an ACL
        that refuses the marker topic, a broker outage)."""
        if not self._open or self._sync_failed:
            return False
        deadline = time.monotonic() + timeout
        if not self._sync_acked.is_set():
            if not self._sync_asked:
                self._sync_asked = True
                self.client.subscribe(self._sync_topic, qos=0)
            if not self._sync_acked.wait(timeout):
                self._sync_failed = True
                return False
        nonce = uuid.uuid4().hex
        self.client.publish(self._sync_topic, nonce.encode(), qos=0)
        with self._arrived:
            while nonce not in self._synced:
                left = deadline - time.monotonic()
                if left <= 0:
                    # Not tried again: each advance would wait as long.
                    self._sync_failed = True
                    return False
                self._arrived.wait(left)
            self._synced.discard(nonce)
        return True

    def wait_for(self, count: int = 1, timeout: float | None = None) -> list[Message]:
        """Waits until at least `count` messages arrived and returns them all;
        raises AssertionError naming what did arrive when they do not."""
        __tracebackhide__ = True
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "".join(f"\n  {m.topic} {m.payload[:200]!r}" for m in self.messages)
                    raise AssertionError(
                        f"expected {count} message(s) on {self.topic!r} within {limit:g} s, "
                        f"got {len(self.messages)}{got}"
                    )
                self._arrived.wait(left)
            return list(self.messages)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = f"refused: {reason}"
        elif self._subscribed.is_set():
            # paho reconnected after a broker outage; the clean session lost the subscription.
            self._sync_asked = False
            self._sync_acked.clear()
            client.subscribe(self.topic, qos=self.qos)
        self._connected.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if self._sync_asked and not self._sync_acked.is_set():
            # The SUBACK of the marker topic (the subscription's own came
            # before the `with` block began).
            self._sync_acked.set()
            return
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self._refused = f"refused: {failed[0]}"
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self._sync_topic:
            with self._arrived:
                self._synced.add(bytes(message.payload).decode())
                self._arrived.notify_all()
            return
        received = Message(
            topic=message.topic, payload=bytes(message.payload), qos=message.qos, retain=bool(message.retain)
        )
        with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()
