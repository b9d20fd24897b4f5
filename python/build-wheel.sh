#!/usr/bin/env bash
# Builds a platform wheel of the Python package that carries the server:
# the release binary that `cargo build --release` already made (built here
# first if it is missing), copied in as iotmock/_bin/iotmock. Installing the
# wheel needs no Rust toolchain. The wheel lands in python/dist/.
#
#   python/build-wheel.sh            # uses target/release/iotmock
#   IOTMOCK_WHEEL_BINARY=/path/to/iotmock python/build-wheel.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
binary="${IOTMOCK_WHEEL_BINARY:-$root/target/release/iotmock}"
if [ ! -x "$binary" ]; then
    (cd "$root" && cargo build --release --bin iotmock)
fi
rm -rf "$here/dist" "$here/build"
# The release profile keeps line tables for backtraces; a wheel's copy goes
# without them (223 MB -> 43 MB). The build itself is left as it is.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if command -v strip >/dev/null; then
    strip -o "$work/iotmock" "$binary"
    binary="$work/iotmock"
fi
IOTMOCK_WHEEL_BINARY="$binary" "${PYTHON:-python3}" -m pip wheel --quiet --no-deps \
    --wheel-dir "$here/dist" "$here"
ls "$here"/dist/iotmock-*.whl
