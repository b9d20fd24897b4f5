"""The exceptions of the package."""

from __future__ import annotations

from typing import Any


class IotMockError(Exception):
    """An API call the server refused, with its problem+json fields.

    `status` is the HTTP status; `type`, `title` and `detail` come from the
    `application/problem+json` body (`detail` says what to fix). `body`
    holds the whole decoded body, for extra fields such as `closest`.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        method: str = "",
        url: str = "",
        body: Any = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.method = method
        self.url = url
        self.body = body
        where = f" ({method} {url})" if method else ""
        super().__init__(f"{status} {title}: {detail}{where}")


class StartupError(RuntimeError):
    """The server could not be found or did not start; the message says why
    and carries the end of its log."""
