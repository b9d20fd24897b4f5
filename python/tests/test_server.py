"""Starting and stopping the server: the binary lookup, free ports, the
ready line, scenarios in every form, the log, and failed starts."""

import os
import stat
import textwrap
from pathlib import Path

import pytest

from iotmock import IotMock, StartupError, find_binary, server


@pytest.fixture
def no_binary_anywhere(monkeypatch, tmp_path):
    """No IOTMOCK_BIN, no checkout above the working directory or the
    package, nothing bundled, nothing on PATH."""
    monkeypatch.delenv("IOTMOCK_BIN", raising=False)
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(server, "__file__", str(tmp_path / "pkg" / "server.py"))
    monkeypatch.setattr(server, "BUNDLED", tmp_path / "pkg" / "_bin" / "iotmock")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return tmp_path


def test_a_missing_binary_names_every_place_looked_at(no_binary_anywhere):
    with pytest.raises(StartupError) as e:
        find_binary()
    message = str(e.value)
    assert "IOTMOCK_BIN" in message
    assert "cargo build --release" in message
    assert "PATH" in message


def test_the_lookup_order_is_env_then_checkout_then_path(no_binary_anywhere, monkeypatch):
    tmp = no_binary_anywhere

    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    on_path = executable(tmp / "bin" / "iotmock")
    monkeypatch.setenv("PATH", str(tmp / "bin"))
    assert find_binary() == on_path
    (tmp / "Cargo.toml").write_text("[package]\n")
    built = executable(tmp / "target" / "release" / "iotmock")
    assert find_binary() == built
    chosen = executable(tmp / "elsewhere" / "iotmock")
    monkeypatch.setenv("IOTMOCK_BIN", str(chosen))
    assert find_binary() == chosen
    assert find_binary(on_path) == on_path, "an explicit path wins"


def test_a_binary_that_is_not_executable_is_refused(tmp_path, monkeypatch):
    plain = tmp_path / "iotmock"
    plain.write_text("")
    monkeypatch.setenv("IOTMOCK_BIN", str(plain))
    with pytest.raises(StartupError, match="IOTMOCK_BIN=.* is not an executable"):
        find_binary()


def test_starts_on_free_ports_and_stops_on_exit():
    with IotMock(scenario="none", clock="manual", mock_http=True) as a, IotMock(scenario="none") as b:
        assert a.http_url != b.http_url and a.mqtt_port != b.mqtt_port
        assert a.ready["event"] == "ready"
        assert a.health()["clock"]["mode"] == "manual"
        assert a.mock_http_url and a.mock_http_url.startswith("http://127.0.0.1:")
        assert b.mock_http_url is None
        pid = a.pid
        assert pid is not None
    assert a.returncode == 0, "SIGTERM is a clean shutdown"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("form", ["dict", "toml", "path"])
def test_a_scenario_as_a_dict_a_toml_string_or_a_path(form, tmp_path):
    fleet = {
        "seed": 5,
        "fleet": [
            {"id_pattern": "room-{n}", "count": 3, "tags": ["a b"], "sensors": [{"plugin": "temperature"}]}
        ],
    }
    text = textwrap.dedent(
        """
        seed = 5
        [[fleet]]
        id_pattern = "room-{n}"
        count = 3
        tags = ["a b"]
        [[fleet.sensors]]
        plugin = "temperature"
        """
    )
    (tmp_path / "fleet.toml").write_text(text)
    scenario = {"dict": fleet, "toml": text, "path": tmp_path / "fleet.toml"}[form]
    with IotMock(scenario=scenario, clock="manual") as mock:
        devices = list(mock.devices.list(tag="a b"))
    assert sorted(d["id"] for d in devices) == ["room-1", "room-2", "room-3"]


def test_a_failed_start_says_why_with_the_log():
    with pytest.raises(StartupError) as e:
        IotMock(scenario="[[fleet]]\nnot_a_key = 1\n").start()
    assert "exited with status" in str(e.value)
    assert "not_a_key" in str(e.value), "the server's own error is quoted"


def test_the_log_is_kept_after_stop():
    mock = IotMock(scenario="none", env={"RUST_LOG": "debug"})
    with mock:
        during = mock.log
    assert during, "stderr is captured while running"
    assert mock.log.startswith(during)


def test_a_failing_test_gets_the_server_log_in_its_report(pytester):
    pytester.makepyfile(
        """
        def test_fails(iotmock):
            iotmock.devices.create("d-1")
            assert False, "on purpose"

        def test_passes(iotmock):
            assert iotmock.health()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*iotmock log (http://127.0.0.1:*)*"])
    assert result.stdout.str().count("iotmock log (") == 1, "only the failing test carries it"


def test_sigterm_is_sent_first(tmp_path):
    script = tmp_path / "fake-iotmock"
    record = tmp_path / "signals"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/usr/bin/env python3
            import signal, sys, time
            def term(*_):
                open({str(record)!r}, "w").write("TERM")
                sys.exit(0)
            signal.signal(signal.SIGTERM, term)
            print('{{"event":"ready","http":"127.0.0.1:9","mqtt":"127.0.0.1:9"}}', flush=True)
            time.sleep(60)
            """
        )
    )
    script.chmod(0o755)
    mock = IotMock(binary=script).start()
    mock.stop()
    assert record.read_text() == "TERM"
    assert mock.returncode == 0, "a kill would show -9"


def test_a_scenario_dict_is_written_as_toml_that_reads_back_the_same():
    tomllib = pytest.importorskip("tomllib")
    from iotmock import _toml

    scenario = {
        "seed": 1,
        "fleet": [
            {
                "id": 'a"b\\c',
                "tags": ["ünï", "new\nline"],
                "sensors": [{"plugin": "temperature", "config": {"mean": 19.5, "on": True, "drop": None}}],
            }
        ],
        "stubs": [{"request": {"path": "/x"}, "response": {"status": 200, "body": {"k": [1, 2.5, "s"]}}}],
        "weird key": {},
    }
    expected = {**scenario, "fleet": [{**scenario["fleet"][0]}]}
    expected["fleet"][0]["sensors"] = [{"plugin": "temperature", "config": {"mean": 19.5, "on": True}}]
    assert tomllib.loads(_toml.dumps(scenario)) == expected
