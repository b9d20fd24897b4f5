"""The pytest plugin (entry point `pytest11`).

Fixtures:
- `iotmock`: a server of its own for each test, configured by the marker
  `@pytest.mark.iotmock(seed=..., clock=..., scenario=..., mock_http=...,
  ...)` (any `IotMock` keyword);
- `iotmock_session`: one server for the whole session, reset before each
  test where the API allows (see `Client.reset`); the fixture
  `iotmock_session_options` (override it in a conftest.py) configures it.

Both start with an empty fleet and a manual clock unless told otherwise,
so a test decides what exists and when time passes. Options:
`--iotmock-bin PATH` (else `IOTMOCK_BIN`, a checkout's
`target/release/iotmock`, a bundled binary, `PATH`) and `--iotmock-seed N`.
When a test fails, the log of each server it used is added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from .server import IotMock

#: What the fixtures start with unless the marker or an option says otherwise.
DEFAULTS: dict[str, Any] = {"clock": "manual", "scenario": "none"}

_watched = pytest.StashKey[list[tuple[IotMock, int]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iotmock")
    group.addoption(
        "--iotmock-bin",
        default=None,
        metavar="PATH",
        help="the iotmock binary (default: $IOTMOCK_BIN, target/release/iotmock of a checkout, "
        "a bundled binary, then PATH)",
    )
    group.addoption(
        "--iotmock-seed",
        type=int,
        default=None,
        metavar="N",
        help="--seed of every server the fixtures start",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "iotmock(seed=None, clock='manual', scenario='none', mock_http=False, **options): "
        "how the `iotmock` fixture starts its server (any IotMock keyword)",
    )


def _options(config: pytest.Config, marker: pytest.Mark | None = None) -> dict[str, Any]:
    options = dict(DEFAULTS)
    seed = config.getoption("iotmock_seed")
    if seed is not None:
        options["seed"] = seed
    options["binary"] = config.getoption("iotmock_bin")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.iotmock takes keywords only, e.g. iotmock(clock='manual')")
        options.update(marker.kwargs)
    return options


def _watch(item: pytest.Item, mock: IotMock, offset: int) -> None:
    item.stash.setdefault(_watched, []).append((mock, offset))


@pytest.fixture
def iotmock(request: pytest.FixtureRequest) -> Iterator[IotMock]:
    """An iotmock server for this test (see `@pytest.mark.iotmock`)."""
    mock = IotMock(**_options(request.config, request.node.get_closest_marker("iotmock")))
    mock.start()
    _watch(request.node, mock, 0)
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="session")
def iotmock_session_options() -> dict[str, Any]:
    """`IotMock` keywords for the session's server; override it in a
    conftest.py (e.g. to give it a scenario)."""
    return {}


@pytest.fixture(scope="session")
def _iotmock_session_server(
    request: pytest.FixtureRequest, iotmock_session_options: dict[str, Any]
) -> Iterator[IotMock]:
    mock = IotMock(**{**_options(request.config), **iotmock_session_options})
    mock.start()
    mock.snapshot()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def iotmock_session(_iotmock_session_server: IotMock, request: pytest.FixtureRequest) -> IotMock:
    """The session's iotmock server, reset to how it started where the API allows."""
    _iotmock_session_server.reset()
    _watch(request.node, _iotmock_session_server, _iotmock_session_server.log_size())
    return _iotmock_session_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for mock, offset in item.stash.get(_watched, []):
        report.sections.append(
            (
                f"iotmock log ({mock.http_url if mock.ready else 'not started'})",
                mock.log_since(offset) or "(empty)",
            )
        )
