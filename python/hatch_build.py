"""Wheel build hook: puts a prebuilt `iotmock` binary into the wheel.

`IOTMOCK_WHEEL_BINARY` names the binary (build-wheel.sh passes the release
build). The wheel then carries it as `iotmock/_bin/iotmock` and is tagged for
this platform, since the binary runs only here; without the variable the
wheel stays pure Python and finds the server elsewhere.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BundleBinaryHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        binary = os.environ.get("IOTMOCK_WHEEL_BINARY")
        if self.target_name != "wheel" or not binary:
            return
        if not os.access(binary, os.X_OK):
            raise RuntimeError(
                f"IOTMOCK_WHEEL_BINARY={binary} is not an executable file: "
                "build it first with `cargo build --release`"
            )
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
        build_data["force_include"][binary] = "iotmock/_bin/iotmock"
