"""Which client method calls each API route.

One table, so a new route is one line here (and a method on the client);
the package's tests compare it with the server's `/api/v1/openapi.json` and
fail on a route missing from it.
"""

from __future__ import annotations

from collections.abc import Callable

from .client import (
    Client,
    Clock,
    Commands,
    DeviceApi,
    Devices,
    EdgeNodes,
    HttpJournal,
    Mqtt,
    Plugins,
    Stubs,
    Telemetry,
)

ROUTES: dict[tuple[str, str], Callable[..., object]] = {
    ("GET", "/api/v1/health"): Client.health,
    ("GET", "/api/v1/openapi.json"): Client.openapi,
    ("GET", "/metrics"): Client.metrics,
    ("GET", "/api/v1/clock"): Clock.now,
    ("POST", "/api/v1/clock/advance"): Clock.advance,
    ("POST", "/api/v1/devices"): Devices.create,
    ("POST", "/api/v1/devices/bulk"): Devices.bulk,
    ("GET", "/api/v1/devices"): Devices.list,
    ("GET", "/api/v1/devices/{id}"): Devices.get,
    ("PATCH", "/api/v1/devices/{id}"): Devices.patch,
    ("DELETE", "/api/v1/devices/{id}"): Devices.delete,
    ("POST", "/api/v1/devices/{id}/credentials"): Devices.rotate_credentials,
    ("POST", "/api/v1/devices/{id}/connectivity"): Devices.connectivity,
    ("POST", "/api/v1/devices/{id}/telemetry"): DeviceApi.send_telemetry,
    ("GET", "/api/v1/devices/{id}/state"): DeviceApi.state,
    ("PUT", "/api/v1/devices/{id}/state"): DeviceApi.replace_state,
    ("PATCH", "/api/v1/devices/{id}/state"): DeviceApi.update_state,
    ("GET", "/api/v1/devices/{id}/commands/next"): DeviceApi.next_command,
    ("POST", "/api/v1/devices/{id}/acks/{command_id}"): DeviceApi.ack,
    ("POST", "/api/v1/devices/{id}/commands"): Commands.send,
    ("POST", "/api/v1/commands"): Commands.send_fleet,
    ("GET", "/api/v1/commands"): Commands.list,
    ("GET", "/api/v1/commands/{id}"): Commands.get,
    ("POST", "/api/v1/commands/{id}/cancel"): Commands.cancel,
    ("GET", "/api/v1/commands/batches/{id}"): Commands.batch,
    ("GET", "/api/v1/telemetry"): Telemetry.export,
    ("GET", "/api/v1/telemetry/stream"): Telemetry.stream,
    ("POST", "/api/v1/edge-nodes"): EdgeNodes.create,
    ("GET", "/api/v1/edge-nodes"): EdgeNodes.list,
    ("GET", "/api/v1/edge-nodes/{id}"): EdgeNodes.get,
    ("DELETE", "/api/v1/edge-nodes/{id}"): EdgeNodes.delete,
    ("POST", "/api/v1/edge-nodes/{id}/uplink"): EdgeNodes.uplink,
    ("POST", "/api/v1/stubs"): Stubs.add,
    ("GET", "/api/v1/stubs"): Stubs.list,
    ("DELETE", "/api/v1/stubs"): Stubs.clear,
    ("GET", "/api/v1/stubs/{id}"): Stubs.get,
    ("DELETE", "/api/v1/stubs/{id}"): Stubs.delete,
    ("GET", "/mock/{path}"): Stubs.request,
    ("GET", "/api/v1/http/requests"): HttpJournal.requests,
    ("POST", "/api/v1/http/verify"): HttpJournal.verify,
    ("GET", "/api/v1/plugins"): Plugins.list,
    ("GET", "/api/v1/plugins/{name}"): Plugins.get,
    ("PUT", "/api/v1/plugins/{name}"): Plugins.upload,
    ("DELETE", "/api/v1/plugins/{name}"): Plugins.delete,
    ("POST", "/api/v1/mqtt/publish"): Mqtt.publish,
    ("GET", "/api/v1/mqtt/messages"): Mqtt.messages,
    ("POST", "/api/v1/mqtt/verify"): Mqtt.verify,
    ("GET", "/api/v1/mqtt/clients"): Mqtt.clients,
    ("GET", "/api/v1/mqtt/status"): Mqtt.status,
    ("POST", "/api/v1/mqtt/outage"): Mqtt.outage,
    ("POST", "/api/v1/mqtt/faults"): Mqtt.fault,
    ("GET", "/api/v1/mqtt/faults"): Mqtt.faults,
    ("DELETE", "/api/v1/mqtt/faults"): Mqtt.clear_faults,
    ("DELETE", "/api/v1/mqtt/faults/{id}"): Mqtt.delete_fault,
    ("GET", "/api/v1/mqtt/drops"): Mqtt.drops,
}
