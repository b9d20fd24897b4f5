"""Schemathesis hooks of .ci/contract: keep generated requests within the
wall time a CI run can spend. Waits (verify `within_ms`, long polls'
`wait_ms`), outages and stub delays are valid up to a minute or an hour,
and bulk provisioning up to a million devices; the contract is the same at
a few milliseconds and a few devices, so the values are clamped here, not
in the document."""

import schemathesis

WAIT_FIELDS = ("within_ms", "wait_ms", "delay_ms", "duration_ms")


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _clamp(value):
    if isinstance(value, dict):
        for key, limit in [(k, 50) for k in WAIT_FIELDS] + [("count", 20)]:
            n = _number(value.get(key))
            if n is not None and n > limit:
                value[key] = limit if not isinstance(value[key], str) else str(limit)
        # A stub's `reset` fault answers by resetting the connection, which
        # the checker would count as a network failure of the server.
        value.pop("fault", None)
        for nested in value.values():
            _clamp(nested)
    elif isinstance(value, list):
        for item in value:
            _clamp(item)
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    _clamp(case.body)
    _clamp(case.query)


# Plugin uploads are raw bytes: send whatever was generated as bytes (the
# server refuses them as components, with a 422 the document declares).
schemathesis.serializer.alias("application/wasm", "application/octet-stream")
