"""The two fixes we apply to the official Alipay SDK, and the progress tracking we need.

`alipay.aop.api.util.WebUtils.get_http_connection` (alipay-sdk-python 3.7.x) opens
`HTTPConnection(host, port=80)` (443 for https) whatever the URL says, and then builds the
request target with `url += url_parse_result.port` — str + int, a `TypeError` — whenever the
URL carries an explicit `:PORT`. So the SDK cannot reach a gateway on any other port
(a simulator, a sandbox behind a proxy). `do_post` looks the function up in its module's
globals at call time, so replacing that one module attribute is enough; nothing in
site-packages is edited.

`DefaultAlipayClient.__prepare_request_params` stamps the `timestamp` common parameter with
`datetime.datetime.now()` — the machine's local time — and offers no way to set it per
request (it overwrites whatever the request carries). Alipay reads it as Beijing time, so a
server running in UTC sends a time 8 h in the past. That module reaches `datetime` through
its own global, so we give it a stand-in whose `datetime.now()` is Beijing wall time; the
real `datetime` module is untouched everywhere else.

Our connection replacement keeps the SDK's behaviour otherwise (absolute-form request target, a new
connection per call, the same timeout) and returns a connection that records whether any
byte of the request was written. The adapter reads that to tell "nothing sent"
(Unavailable) from "sent, outcome unknown" (OutcomeUnknown) without parsing messages.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import importlib
import threading
import types
import urllib.parse
from typing import Any

from channels.alipay.transforms import BEIJING

_local = threading.local()
_lock = threading.Lock()
_installed = False


class _Tracking:
    """Mixin: remembers the last connection of this thread and whether it sent bytes."""

    paygate_sent: bool = False

    def send(self, data: Any) -> None:
        self.paygate_sent = True
        super().send(data)  # type: ignore[misc]


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


class _BeijingDatetime(_dt.datetime):
    """`datetime` whose argument-less `now()` is naive Beijing wall time (what Alipay reads)."""

    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> _BeijingDatetime:
        if tz is not None:
            return super().now(tz)
        return super().now(BEIJING).replace(tzinfo=None)


def install_port_fix() -> None:
    """Point the SDK's connection factory at ours and its request clock at Beijing time;
    idempotent, thread-safe."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch is the point
    with _lock:
        if _installed:
            return
        from alipay.aop.api.util import WebUtils

        client_module = importlib.import_module("alipay.aop.api.DefaultAlipayClient")
        WebUtils.get_http_connection = _get_http_connection
        # The client module's only use of `datetime` is the request timestamp.
        vars(client_module)["datetime"] = types.SimpleNamespace(datetime=_BeijingDatetime)
        _installed = True


def reset_connection() -> None:
    _local.connection = None


def last_connection() -> Tracked | None:
    """The connection the current thread's last SDK call opened, if it got that far."""
    conn: Tracked | None = getattr(_local, "connection", None)
    return conn
