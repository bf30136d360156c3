"""A signing process for e-notes: `python -m enotes.sign_worker`, driven by `ProcessLine`.

It reads length-prefixed frames on stdin and answers on stdout, one chunk at a time:

- first frame: the issuer's and the supervisor's PEM keys (a pipe, never argv or the env);
- then each request: id, and the contents of a chunk of notes;
- each reply: id, status 0 and per note (issuer signature, µs since the epoch, supervisor
  signature, µs), or status 1 and an error text.

It exits when stdin closes, i.e. when its parent closes the line or dies.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
from typing import IO

FRAME = struct.Struct(">I")
HEADER = struct.Struct(">IB")  # request id, status (replies only carry the status)
REQUEST_ID = struct.Struct(">I")
STAMP = struct.Struct(">q")


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


def pack_items(items: list[bytes]) -> bytes:
    return b"".join(FRAME.pack(len(i)) + i for i in items)


def unpack_items(data: bytes, offset: int = 0) -> list[bytes]:
    items = []
    while offset < len(data):
        (size,) = FRAME.unpack_from(data, offset)
        offset += FRAME.size
        items.append(data[offset : offset + size])
        offset += size
    return items


def _now_us() -> bytes:
    return STAMP.pack(time.time_ns() // 1000)


def main() -> None:
    from enotes.signing import SM2Signer, signed_by_supervisor

    # The protocol owns fd 1; anything printed by accident goes to stderr instead. Ctrl-C
    # reaches the whole process group: the parent decides when this process ends.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    keys = read_frame(stdin)
    if keys is None:
        return
    issuer_pem, supervisor_pem = unpack_items(keys)
    issuer = SM2Signer.from_text(issuer_pem.decode())
    supervisor = SM2Signer.from_text(supervisor_pem.decode())
    while (request := read_frame(stdin)) is not None:
        (request_id,) = REQUEST_ID.unpack_from(request)
        try:
            out: list[bytes] = []
            for content in unpack_items(request, REQUEST_ID.size):
                issuer_sig = issuer.sign(content)
                out += [issuer_sig, _now_us()]
                out += [supervisor.sign(signed_by_supervisor(content, issuer_sig)), _now_us()]
            reply = HEADER.pack(request_id, 0) + pack_items(out)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            reply = HEADER.pack(request_id, 1) + f"{type(exc).__name__}: {exc}".encode()
        stdout.write(frame(reply))
        stdout.flush()


if __name__ == "__main__":
    main()
