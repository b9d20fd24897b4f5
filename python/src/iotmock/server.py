"""Starts `iotmock serve` on free ports and stops it again.

The binary is looked up in this order: an explicit path (`binary=`, the
pytest option `--iotmock-bin`), `IOTMOCK_BIN`, the cargo target directory of
a checkout (`target/release/iotmock` in the working directory or a parent,
or under `CARGO_TARGET_DIR`), the binary bundled in a platform wheel, and
`PATH`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from . import _toml
from .client import Client
from .errors import StartupError

Scenario = str | os.PathLike[str] | Mapping[str, Any]

#: Where a platform wheel puts the server binary.
BUNDLED = Path(__file__).parent / "_bin" / "iotmock"


def _checkouts() -> list[Path]:
    found = []
    if os.environ.get("CARGO_TARGET_DIR"):
        found.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "iotmock")
    for base in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (base, *base.parents):
            if (directory / "Cargo.toml").is_file():
                found.append(directory / "target" / "release" / "iotmock")
    return found


def find_binary(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The `iotmock` binary to run; StartupError naming every place looked at."""
    if explicit is not None:
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise StartupError(f"the iotmock binary given ({path}) is not an executable file")
        return path.absolute()
    from_env = os.environ.get("IOTMOCK_BIN")
    if from_env:
        if not os.access(from_env, os.X_OK):
            raise StartupError(f"IOTMOCK_BIN={from_env} is not an executable file")
        return Path(from_env).absolute()
    checkouts = _checkouts()
    for candidate in checkouts:
        if os.access(candidate, os.X_OK):
            return candidate
    if BUNDLED.is_file():
        if not os.access(BUNDLED, os.X_OK):
            BUNDLED.chmod(0o755)
        return BUNDLED
    on_path = shutil.which("iotmock")
    if on_path:
        return Path(on_path)
    looked = ", ".join(str(c) for c in checkouts) or "no cargo checkout above the working directory"
    raise StartupError(
        "cannot find the iotmock binary. Looked at: the IOTMOCK_BIN environment variable "
        "(unset; or pass --iotmock-bin / binary=), the cargo target directory of a checkout "
        f"({looked}; build it with `cargo build --release`), and PATH (no `iotmock` on it). "
        "A platform wheel (python/build-wheel.sh) carries the binary with it."
    )


class IotMock(Client):
    """An `iotmock serve` process on free loopback ports, and a client of it.

    Any `serve` flag can be given: `seed`, `clock` (`realtime`, `manual`,
    `xN`), `scenario` (a path, a TOML string, a dict, or `"none"` for an
    empty fleet), `mock_http=True` for the second stub listener,
    `mqtt_auth`, `plugins` (a folder), `data_dir`, and `args` for the rest.
    Use it as a context manager, or call `start()` and `stop()`. The
    server's stderr is kept (`log`).
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        clock: str | None = None,
        scenario: Scenario | None = None,
        mock_http: bool = False,
        mqtt_auth: str | None = None,
        plugins: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._binary = binary
        self._options: dict[str, Any] = {
            "seed": seed,
            "clock": clock,
            "mqtt-auth": mqtt_auth,
            "plugins": plugins,
            "data-dir": data_dir,
        }
        self._scenario = scenario
        self._mock_http = mock_http
        self._args = list(args)
        self._env = env
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None
        self._log_text = ""
        self.ready: dict[str, Any] = {}
        self.stdout: list[str] = []
        self.mock_http_url: str | None = None
        self.returncode: int | None = None
        self._command: list[str] = []

    def __enter__(self) -> IotMock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def command(self) -> list[str]:
        """The command line the server runs with (after `start()`)."""
        return list(self._command)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> IotMock:
        if self._process is not None:
            raise RuntimeError("this IotMock is already started")
        binary = find_binary(self._binary)
        self._tmp = tempfile.TemporaryDirectory(prefix="iotmock-")
        tmp = Path(self._tmp.name)
        command = [str(binary), "serve", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"]
        if self._mock_http:
            command += ["--mock-http", "127.0.0.1:0"]
        for flag, value in self._options.items():
            if value is not None:
                command += [f"--{flag}", str(value)]
        if self._scenario is not None:
            command += ["--scenario", _scenario_arg(self._scenario, tmp)]
        command += self._args
        self._command = command
        self._log_path = tmp / "iotmock.log"
        env = {**os.environ, **(self._env or {})}
        with open(self._log_path, "w") as log:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env
            )
        got_ready = threading.Event()
        assert self._process.stdout is not None
        reader = threading.Thread(
            target=self._read_stdout,
            args=(self._process.stdout, got_ready),
            name="iotmock-stdout",
            daemon=True,
        )
        reader.start()
        if not got_ready.wait(self._start_timeout) or not self.ready:
            try:
                code: int | None = self._process.wait(2)
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            why = (
                f"exited with status {code}"
                if code is not None
                else f"printed no ready line in {self._start_timeout:g} s"
            )
            raise StartupError(f"iotmock ({' '.join(command)}) {why}; its log:\n{_tail(self._log_text)}")
        admin = self.ready.get("mqtt_admin")
        mqtt_host, _, mqtt_port = str(self.ready["mqtt"]).rpartition(":")
        super().__init__(
            f"http://{self.ready['http']}",
            mqtt_host=mqtt_host,
            mqtt_port=int(mqtt_port),
            mqtt_credentials=(admin["username"], admin["password"]) if admin else None,
        )
        if "mock_http" in self.ready:
            self.mock_http_url = f"http://{self.ready['mock_http']}"
        return self

    def _read_stdout(self, stream: IO[str], got_ready: threading.Event) -> None:
        for line in stream:
            self.stdout.append(line.rstrip("\n"))
            if not self.ready:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "ready":
                    self.ready = event
                    got_ready.set()
        got_ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s; keeps the log."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.returncode = process.returncode
        if hasattr(self, "_http"):
            self.close()
        self._log_text = self.log
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._log_path = None

    @property
    def log(self) -> str:
        """What the server wrote to stderr so far."""
        if self._log_path is not None and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return self._log_text

    def log_size(self) -> int:
        return len(self.log)

    def log_since(self, offset: int) -> str:
        return self.log[offset:]


def _scenario_arg(scenario: Scenario, tmp: Path) -> str:
    if isinstance(scenario, Mapping):
        text = _toml.dumps(scenario)
    elif isinstance(scenario, str) and ("\n" in scenario or "=" in scenario):
        text = scenario
    else:
        return os.fspath(scenario)
    path = tmp / "scenario.toml"
    path.write_text(text)
    return str(path)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"
