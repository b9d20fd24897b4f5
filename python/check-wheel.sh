#!/usr/bin/env bash
# Installs the platform wheel (build-wheel.sh) into a fresh venv outside the
# checkout, checks that the client finds the binary the wheel carries, and
# runs the first example against it: a command sent and acknowledged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wheel="$(ls "$here"/dist/iotmock-*.whl)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$wheel" pytest
cp "$here/examples/test_first_test.py" "$work/"
cd "$work"
# No IOTMOCK_BIN, no checkout above the working directory, no iotmock on PATH:
# only the bundled binary can be found.
env -u IOTMOCK_BIN -u CARGO_TARGET_DIR PATH="$work/venv/bin:/usr/bin:/bin" \
    "$work/venv/bin/python" -c '
import iotmock, iotmock.server as s
found = iotmock.find_binary()
assert found == s.BUNDLED, f"found {found}, not the bundled {s.BUNDLED}"
print("bundled binary:", found)
'
env -u IOTMOCK_BIN -u CARGO_TARGET_DIR PATH="$work/venv/bin:/usr/bin:/bin" \
    "$work/venv/bin/python" -m pytest -p no:cacheprovider -q test_first_test.py
