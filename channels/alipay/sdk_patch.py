"""The one fix we apply to the official Alipay SDK, and the progress tracking we need.

`alipay.aop.api.util.WebUtils.get_http_connection` (alipay-sdk-python 3.7.x) opens
`HTTPConnection(host, port=80)` (443 for https) whatever the URL says, and then builds the
request target with `url += url_parse_result.port` — str + int, a `TypeError` — whenever the
URL carries an explicit `:PORT`. So the SDK cannot reach a gateway on any other port
(a simulator, a sandbox behind a proxy). `do_post` looks the function up in its module's
globals at call time, so replacing that one module attribute is enough; nothing in
site-packages is edited.

Our replacement keeps the SDK's behaviour otherwise (absolute-form request target, a new
connection per call, the same timeout) and returns a connection that records whether any
byte of the request was written. The adapter reads that to tell "nothing sent"
(Unavailable) from "sent, outcome unknown" (OutcomeUnknown) without parsing messages.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from typing import Any

_local = threading.local()
_lock = threading.Lock()
_installed = False


class _Tracking:
    """Mixin: remembers the last connection of this thread and whether it sent bytes."""

    paygate_sent: bool = False
    paygate_status: int | None = None

    def send(self, data: Any) -> None:
        self.paygate_sent = True
        super().send(data)  # type: ignore[misc]

    def getresponse(self) -> http.client.HTTPResponse:
        resp: http.client.HTTPResponse = super().getresponse()  # type: ignore[misc]
        self.paygate_status = resp.status
        return resp


class TrackedHTTPConnection(_Tracking, http.client.HTTPConnection):
    pass


class TrackedHTTPSConnection(_Tracking, http.client.HTTPSConnection):
    pass


Tracked = TrackedHTTPConnection | TrackedHTTPSConnection


def open_connection(url: str, timeout: float) -> tuple[str, Tracked]:
    """(absolute-form request target, unopened connection) honouring an explicit port."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    conn: Tracked
    if parts.scheme == "https":
        conn = TrackedHTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout)
    else:
        conn = TrackedHTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    _local.connection = conn
    target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return target, conn


def _get_http_connection(url: str, query_string: str, timeout: float) -> tuple[str, Tracked]:
    """Drop-in for WebUtils.get_http_connection (same signature and return shape)."""
    base = url.split("?", 1)[0]
    return open_connection(f"{base}?{query_string}", timeout)


def install_port_fix() -> None:
    """Point the SDK's connection factory at ours; idempotent, thread-safe."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch is the point
    with _lock:
        if _installed:
            return
        from alipay.aop.api.util import WebUtils

        WebUtils.get_http_connection = _get_http_connection
        _installed = True


def reset_connection() -> None:
    _local.connection = None


def last_connection() -> Tracked | None:
    """The connection the current thread's last SDK call opened, if it got that far."""
    conn: Tracked | None = getattr(_local, "connection", None)
    return conn
