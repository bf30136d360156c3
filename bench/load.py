"""A small keep-alive HTTP/1.1 load generator, run as its own process on loopback.

Bounded in both request count and time. Requests come from a JSON-lines file of
{"method", "path", "headers", "body"} (cycled), or from a single --path.
Prints one JSON object: requests, errors, seconds, rps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from pathlib import Path


def _encode(host: str, req: dict[str, object]) -> bytes:
    body = str(req.get("body", "")).encode()
    headers = {"Host": host, "Connection": "keep-alive", **dict(req.get("headers", {}))}  # type: ignore[call-overload]
    if body or req.get("method", "GET") != "GET":
        headers["Content-Length"] = str(len(body))
    head = f"{req.get('method', 'GET')} {req['path']} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        key = k.strip().lower()
        if key == b"content-length":
            length = int(v)
        elif key == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _worker(
    host: str,
    port: int,
    requests: itertools.cycle[bytes],
    budget: list[int],
    deadline: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            payload = next(requests)
            started = time.perf_counter()
            writer.write(payload)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                errors[0] += 1
    finally:
        writer.close()


async def main_async(ns: argparse.Namespace, reqs: list[dict[str, object]]) -> dict[str, float]:
    encoded = itertools.cycle([_encode(f"{ns.host}:{ns.port}", r) for r in reqs])
    budget = [ns.max_requests]
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    deadline = started + ns.duration
    await asyncio.gather(
        *[
            _worker(ns.host, ns.port, encoded, budget, deadline, latencies, errors)
            for _ in range(ns.connections)
        ]
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--requests-file")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    ns = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    if ns.requests_file:
        reqs = [json.loads(x) for x in Path(ns.requests_file).read_text().splitlines() if x]
    else:
        reqs = [{"method": ns.method, "path": ns.path}]
    print(json.dumps(asyncio.run(main_async(ns, reqs))))


if __name__ == "__main__":
    main()
