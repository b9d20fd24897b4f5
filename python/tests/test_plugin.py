"""The pytest plugin: the marker and options configure the servers, the
session server is reset between tests, and failures carry the log."""

import pytest


@pytest.mark.iotmock(seed=7, clock="x10", scenario={"fleet": [{"id": "kept", "tags": ["t"]}]}, mock_http=True)
def test_the_marker_configures_the_server(iotmock):
    assert iotmock.clock.now()["mode"] == "x10"
    assert [d["id"] for d in iotmock.devices.list()] == ["kept"]
    assert iotmock.command[iotmock.command.index("--seed") + 1] == "7"
    assert iotmock.mock_http_url is not None


def test_without_a_marker_the_fleet_is_empty_and_the_clock_manual(iotmock):
    assert list(iotmock.devices.list()) == []
    assert iotmock.clock.now()["mode"] == "manual"


SESSION_TESTS = """
import pytest

servers = []

def test_first_leaves_things_behind(iotmock_session):
    servers.append(iotmock_session.http_url)
    assert [d["id"] for d in iotmock_session.devices.list()] == ["from-scenario"]
    iotmock_session.devices.create("left-over", tags=["x"])
    iotmock_session.edge.create("gw", {"tag": "x"}, [{"plugin": "edge-aggregate"}])
    iotmock_session.stubs.add(id="s", request={"path": "/s"}, response={"status": 200})
    iotmock_session.stubs.request("GET", "/s")
    iotmock_session.mqtt.publish("old/news", 1)

def test_second_starts_clean_on_the_same_server(iotmock_session):
    servers.append(iotmock_session.http_url)
    assert servers[0] == servers[1]
    assert [d["id"] for d in iotmock_session.devices.list()] == ["from-scenario"]
    assert iotmock_session.edge.list() == []
    assert iotmock_session.stubs.list() == []
    assert iotmock_session.mqtt.messages("old/#") == []
    assert iotmock_session.http.requests() == []
    iotmock_session.mqtt.publish("new/news", 1)
    iotmock_session.mqtt.verify("+/news", exactly=1)
"""


def test_the_session_server_is_shared_and_reset_between_tests(pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def iotmock_session_options():
            return {"scenario": {"fleet": [{"id": "from-scenario"}]}}
        """
    )
    pytester.makepyfile(SESSION_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_options_choose_the_binary_and_the_seed(pytester, iotmock):
    binary = iotmock.command[0]
    pytester.makepyfile(
        """
        def test_seed(iotmock):
            assert iotmock.command[iotmock.command.index("--seed") + 1] == "99"
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--iotmock-bin={binary}", "--iotmock-seed=99"
    )
    result.assert_outcomes(passed=1)
    missing = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--iotmock-bin=/nonexistent/iotmock")
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(
        ["*the iotmock binary given (/nonexistent/iotmock) is not an executable file*"]
    )
