from pathlib import Path

import pytest

from iotmock import find_binary

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def built_plugin() -> Path:
    """A sensor component from the cargo build next to the binary."""
    release = find_binary().resolve().parent
    found = sorted(release.glob("build/iotmock-*/out/plugins-target/wasm32-wasip2/release/temperature.wasm"))
    if not found:
        pytest.skip(f"no built plugin component under {release}/build (run `cargo build --release`)")
    return found[0]
