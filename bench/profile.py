"""Profile one hot path in-process: `python -m bench.profile lookup|confirm|kiosk|pos [seconds]`.

Starts the embedded PostgreSQL/Redis of the bench, seeds bills, runs `paygate serve` under
pyinstrument while bench.load drives it, and prints the profile (text) on stop. Not a
benchmark: the profiler slows the server; read the shares, not the rates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.payments_support import BANK_CODE, BANK_SECRET, confirm_requests, env, seed_bills
from bench.runner import _ensure_servers, load, wait_http
from gateway.procs import free_port


def _confirmations(what: str, codes: list[str], tmp: Path) -> Path:
    """One confirmation per bill, as the scenario of that channel sends them."""
    path = tmp / "req.jsonl"
    if what == "kiosk":
        from bench.scenarios import kiosk_confirm

        return kiosk_confirm.Kiosks().requests(codes, path)
    if what == "pos":
        from bench.scenarios import pos_sale

        return pos_sale.sales(codes, path)
    return confirm_requests(codes, path)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "lookup"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    services = _ensure_servers()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if what == "lookup":
                codes = seed_bills(200)
                req = Path(tmp) / "req.jsonl"
                req.write_text(
                    "".join(
                        json.dumps({"method": "GET", "path": f"/v1/pay/{c}"}) + "\n" for c in codes
                    )
                )
                warm: Path | None = req
            else:
                codes = seed_bills(3000)
                req = _confirmations(what, codes, Path(tmp))
                warm = None
            port = free_port()
            banks = f"{BANK_CODE}={BANK_SECRET}@http://127.0.0.1:9/banks/{BANK_CODE}"
            with env(
                PAYGATE_PORT=str(port),
                PAYGATE_LOG_LEVEL="WARNING",
                PAYGATE_LOOKUP_RATE_LIMIT="1000000000",
                PAYGATE_BANKS=banks,
                PAYGATE_KIOSK_ACQUIRER_URL="http://127.0.0.1:9/acquirer",
                PAYGATE_KIOSK_ACQUIRER_SECRET=BANK_SECRET,
                PAYGATE_KIOSK_KEY_DIR=tmp,
            ):
                out = Path(tmp) / "profile.txt"
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pyinstrument",
                        *os.environ.get("PROFILE_FLAGS", "").split(),
                        "-o",
                        str(out),
                        "-m",
                        "gateway.cli",
                        "serve",
                    ],
                    env=os.environ.copy(),
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/health/ready")
                    if warm is not None:
                        load(port, quick=True, requests_file=str(warm), duration=1.0)
                    print(
                        json.dumps(
                            load(
                                port,
                                quick=False,
                                requests_file=str(req),
                                duration=seconds,
                                max_requests=len(codes) if warm is None else None,
                            )
                        )
                    )
                finally:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=60)
                print(out.read_text())
    finally:
        services.stop()


if __name__ == "__main__":
    main()
