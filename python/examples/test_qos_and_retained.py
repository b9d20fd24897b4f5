"""QoS and retained messages, seen by paho-mqtt clients: a retained message
reaches late subscribers until it is cleared, a persistent session keeps
QoS 1 messages for a client that is away (and not QoS 0 ones), and QoS 2
arrives exactly once."""

import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def test_a_retained_message_reaches_late_subscribers_until_cleared(iotmock):
    iotmock.mqtt.publish("site/config", {"interval_s": 30}, qos=1, retain=True)
    with iotmock.mqtt.subscribe("site/config", qos=1) as late:
        [config] = late.wait_for(1)
    assert config.retain and config.json() == {"interval_s": 30}

    iotmock.mqtt.publish("site/config", "", qos=1, retain=True)  # an empty retained message clears it
    with iotmock.mqtt.subscribe("site/#", qos=1) as later:
        iotmock.mqtt.publish("site/ping", "after")
        assert [m.topic for m in later.wait_for(1)] == ["site/ping"], "no retained config any more"


class Device:
    """A paho client with a persistent session (clean_session=False)."""

    def __init__(self, mock, client_id):
        self.mock, self.received, self.arrived = mock, [], threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = self.on_message
        self.client.on_subscribe = lambda client, userdata, mid, reasons, props: self.subscribed.set()

    def subscribe(self, topic, qos):
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(5), "no SUBACK"

    def on_message(self, client, userdata, message):
        with self.arrived:
            self.received.append((message.topic, message.payload.decode(), message.qos))
            self.arrived.notify_all()

    def connect(self):
        self.client.connect(self.mock.mqtt_host, self.mock.mqtt_port)
        self.client.loop_start()

    def disconnect(self):
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count, timeout=5):
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received)


def test_a_persistent_session_keeps_qos1_messages_while_away(iotmock):
    device = Device(iotmock, "sensor-7")
    device.connect()
    device.subscribe("cmd/sensor-7/#", qos=1)
    iotmock.mqtt.publish("cmd/sensor-7/hello", "first", qos=1)
    device.wait_for(1)
    device.disconnect()

    iotmock.mqtt.publish("cmd/sensor-7/a", "kept", qos=1)
    iotmock.mqtt.publish("cmd/sensor-7/b", "lost", qos=0)
    iotmock.mqtt.publish("cmd/sensor-7/c", "kept too", qos=1)

    device.connect()  # same client id, session kept: the queue is delivered
    received = device.wait_for(3)
    device.disconnect()
    assert received[1:] == [("cmd/sensor-7/a", "kept", 1), ("cmd/sensor-7/c", "kept too", 1)]
    iotmock.mqtt.verify("cmd/sensor-7/#", exactly=4)


def test_qos2_arrives_exactly_once(iotmock):
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    publisher.connect(iotmock.mqtt_host, iotmock.mqtt_port)
    publisher.loop_start()
    with iotmock.mqtt.subscribe("meter/+/reading", qos=2) as sub:
        for n in range(5):
            publisher.publish(f"meter/{n}/reading", str(n), qos=2).wait_for_publish(5)
        received = sub.wait_for(5)
    publisher.disconnect()
    publisher.loop_stop()
    assert sorted(m.text for m in received) == ["0", "1", "2", "3", "4"]
    assert {m.qos for m in received} == {2}
    iotmock.mqtt.verify("meter/+/reading", exactly=5)
