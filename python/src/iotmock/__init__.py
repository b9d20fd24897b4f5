"""iotmock from Python: start the mock IoT platform, drive it, assert on it.

    from iotmock import IotMock

    with IotMock(clock="manual", scenario="none") as mock:
        mock.devices.create("th-1", command_handler="thermostat")
        command = mock.commands.send("th-1", "set_target", {"target": 22})
        mock.clock.advance(1000)
        assert command.wait().status == "completed"

Installed, the package is also a pytest plugin: the fixtures `iotmock` and
`iotmock_session`, the options `--iotmock-bin` and `--iotmock-seed`, and
the marker `@pytest.mark.iotmock(...)`.
"""

from .client import (
    FINAL_STATES,
    Batch,
    Client,
    Command,
    DeviceApi,
    Reading,
    TelemetryStream,
)
from .errors import IotMockError, StartupError
from .mqtt import Message, Subscription
from .server import IotMock, find_binary

__all__ = [
    "FINAL_STATES",
    "Batch",
    "Client",
    "Command",
    "DeviceApi",
    "IotMock",
    "IotMockError",
    "Message",
    "Reading",
    "StartupError",
    "Subscription",
    "TelemetryStream",
    "find_binary",
]
