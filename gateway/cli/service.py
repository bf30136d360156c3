"""Running the service: serve, worker, db, demo, simulators, e-note keys, bench, version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from gateway import __version__
from gateway import logging as app_logging
from gateway.cli.base import main, prepare, serve_simulator, with_resources
from gateway.procs import exit_with_parent, free_port, spawn_child, stop_children
from gateway.settings import Settings


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
@click.option("--host", default=None, help="Bind address (PAYGATE_HOST).")
@click.option("--port", type=int, default=None, help="Port (PAYGATE_PORT).")
@click.option("--workers", type=int, default=None, help="Worker processes (PAYGATE_WORKERS).")
@click.option("--demo", is_flag=True, help="Seed demo data and start the background worker.")
def serve(host: str | None, port: int | None, workers: int | None, demo: bool) -> None:
    """Migrate the database and serve the API (uvicorn + httptools + uvloop)."""
    import uvicorn

    # Exported before settings are read: the app factory (uvicorn), the worker and
    # PAYGATE_PUBLIC_URL's default (notify URLs given to channels, bill QR codes) must all
    # see the port actually served, not the 8000 default.
    if host:
        os.environ["PAYGATE_HOST"] = host
    if port:
        os.environ["PAYGATE_PORT"] = str(port)
    settings = prepare()
    host = host or settings.server.host
    port = port or settings.server.port
    workers = workers or settings.server.workers
    children: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    if demo:
        from gateway.demo import KIOSK_DEVICE, KIOSK_DEVICES_FILE, POS_TERMINALS_FILE, seed

        if not settings.alipay.enabled:
            children.append(_start_alipay_simulator())
        # The kiosk simulator plays the kiosks' acquirer; the terminal page's process the
        # card terminals' (so a duplicate card sale's refund goes back to the card).
        kiosk_port = None if settings.payments.kiosk.enabled else _simulated_acquirer("KIOSK")
        pos_acquirer = not settings.payments.pos_acquirer.enabled
        pos_port = _simulated_acquirer("POS") if pos_acquirer else free_port()
        settings = Settings.from_env()  # now pointing at the simulators
        for line in with_resources(settings, seed):
            click.echo(line)
        # A demo's webhook receiver runs on this machine; production never allows that.
        os.environ.setdefault("PAYGATE_WEBHOOK_ALLOW_PRIVATE", "1")
        # Children inherit DATABASE_URL/REDIS_URL and stop when we stop, even on SIGKILL.
        children.append(spawn_child("worker"))
        if kiosk_port is not None:
            devices = str(KIOSK_DEVICES_FILE)
            children.append(
                spawn_child("simulator", "kiosk", "--port", str(kiosk_port), "--devices", devices)
            )
            urls.append(f"  kiosk (demo): http://127.0.0.1:{kiosk_port}/kiosk/{KIOSK_DEVICE}")
        terminals = ["--port", str(pos_port), "--terminals", str(POS_TERMINALS_FILE)]
        if pos_acquirer:
            terminals.append("--with-acquirer")
        children.append(spawn_child("simulator", "pos-terminal", *terminals))
        urls.append(f"  card terminal (demo): http://127.0.0.1:{pos_port}/pos")
    click.secho(f"paygate {__version__} serving on http://{host}:{port}", fg="green", bold=True)
    click.echo(f"  API reference: http://{host}:{port}/schema   readiness: /health/ready")
    for url in urls:
        click.echo(url)
    try:
        uvicorn.run(
            "gateway.app:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http="httptools",
            loop="uvloop",
            log_config=None,
            access_log=False,
            server_header=False,
            # uvicorn would take X-Forwarded-For from any local peer as the client address;
            # the app reads it only from PAYGATE_TRUSTED_PROXIES (gateway.limits).
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        stop_children(children)


def _start_alipay_simulator() -> subprocess.Popen[bytes]:
    """Demo mode without an Alipay account: run the simulator and point the adapter at it."""
    from channels.alipay.keys import ensure_keys

    keys_dir = Path("var/alipay").resolve()
    keys = ensure_keys(keys_dir)
    port = free_port()
    app_id = "2021000000000001"
    os.environ |= {
        "PAYGATE_ALIPAY_APP_ID": app_id,
        "PAYGATE_ALIPAY_GATEWAY_URL": f"http://127.0.0.1:{port}/gateway.do",
        "PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH": str(keys.app_private),
        "PAYGATE_ALIPAY_PUBLIC_KEY_PATH": str(keys.alipay_public),
    }
    child = spawn_child(
        "simulator", "alipay", "--port", str(port), "--keys-dir", str(keys_dir), "--app-id", app_id
    )
    click.echo(f"  Alipay simulator (demo): http://127.0.0.1:{port}/sim/cashier/<attempt id>")
    return child


def _simulated_acquirer(name: str) -> int:
    """Demo mode without this acquirer (PAYGATE_<NAME>_ACQUIRER_URL unset): a simulator
    started after the seed plays it on a free port, under a secret made for this run."""
    import secrets

    port = free_port()
    os.environ |= {
        f"PAYGATE_{name}_ACQUIRER_URL": f"http://127.0.0.1:{port}/acquirer",
        f"PAYGATE_{name}_ACQUIRER_SECRET": secrets.token_hex(32),
    }
    return port


@main.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def worker(once: bool, parent: int | None) -> None:
    """Run the background worker loop."""
    from gateway import worker as w

    if parent is not None:
        exit_with_parent(parent)
    settings = prepare()
    if once:
        click.echo(with_resources(settings, w.run_once))
    else:
        with_resources(settings, w.run_forever)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema (default: to head)."""
    from gateway import migrate as migrations

    settings = prepare(migrate=False)
    assert settings.database.url is not None
    migrations.upgrade(settings.database.url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (e.g. base)."""
    from gateway import migrate as migrations

    settings = prepare(migrate=False)
    assert settings.database.url is not None
    migrations.downgrade(settings.database.url, revision)
    click.echo(f"database at {revision}")


@main.command()
def demo() -> None:
    """Seed demo data (idempotent)."""
    from gateway.demo import seed

    settings = prepare()
    for line in with_resources(settings, seed):
        click.echo(line)


@main.group()
def simulator() -> None:
    """Channel simulators speaking the real wire protocols (for tests and the demo)."""


@simulator.command("alipay")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8101, show_default=True, help="Port.")
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiplier for Alipay's notification retry schedule (0.01: 4 min → 2.4 s).",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/alipay"),
    show_default=True,
    help="Where the generated demo key pairs live (created on first run).",
)
@click.option("--app-id", default=None, help="Merchant app id (PAYGATE_ALIPAY_APP_ID).")
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def simulator_alipay(
    *,
    host: str,
    port: int,
    time_scale: float,
    keys_dir: Path,
    app_id: str | None,
    parent: int | None,
) -> None:
    """Serve the Alipay gateway simulator (uvicorn + httptools, which routes the SDK's
    absolute-form request target correctly)."""

    from channels.alipay.keys import ensure_keys
    from channels.alipay.simulator import create_simulator

    if parent is not None:
        exit_with_parent(parent)
    settings = Settings.from_env()
    app_logging.configure(settings.log)
    app_id = app_id or settings.alipay.app_id or "2021000000000001"
    keys = ensure_keys(keys_dir)
    app = create_simulator(
        app_id=app_id,
        app_public_key_pem=keys.app_public.read_text(encoding="ascii"),
        alipay_private_key_pem=keys.alipay_private.read_text(encoding="ascii"),
        time_scale=time_scale,
    )
    click.secho(f"Alipay simulator on http://{host}:{port}/gateway.do", fg="green", bold=True)
    click.echo("Point paygate at it with:")
    click.echo(f"  export PAYGATE_ALIPAY_APP_ID={app_id}")
    click.echo(f"  export PAYGATE_ALIPAY_GATEWAY_URL=http://{host}:{port}/gateway.do")
    click.echo(f"  export PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH={keys.app_private.resolve()}")
    click.echo(f"  export PAYGATE_ALIPAY_PUBLIC_KEY_PATH={keys.alipay_public.resolve()}")
    click.echo(f"Cashier for a trade: http://{host}:{port}/sim/cashier/<out_trade_no>")
    serve_simulator(app, host, port)


@main.command("enote-keys")
def enote_keys() -> None:
    """Print the e-note signing keys' ids, certificate serials and public keys.

    Creates the demo keys under PAYGATE_ENOTE_KEY_DIR on first use when none are configured.
    Needs no database: the public keys are what a verifier elsewhere registers.
    """
    from gateway.enotes import enote_context

    signers = enote_context(Settings.from_env()).signers
    for role, signer in (("issuer", signers.issuer), ("supervisor", signers.supervisor)):
        point = getattr(signer, "point", b"")
        click.echo(f"{role}: key_id={signer.key_id} cert_serial={signer.cert_serial}")
        if point:
            click.echo(f"  public key (SM2, uncompressed): {point.hex()}")


@simulator.command("bank")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8100, show_default=True)
def simulator_bank(host: str, port: int) -> None:
    """Run the bank simulator (banks from PAYGATE_BANK_SIM="102=<secret>,105=sm2:<bank
    private key hex>:<our public key hex>"; see channels/bank/simulator.py)."""

    serve_simulator("channels.bank.simulator:create_app", host, port)


@simulator.command("kiosk")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8102, show_default=True)
@click.option(
    "--devices",
    "devices_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Load these devices at start: a JSON list of POST /control/devices bodies.",
)
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def simulator_kiosk(host: str, port: int, devices_file: Path | None, parent: int | None) -> None:
    """Run simulated kiosks and their acquirer (the acquirer's HMAC secret from
    PAYGATE_KIOSK_ACQUIRER_SECRET; point paygate's PAYGATE_KIOSK_ACQUIRER_URL at
    http://HOST:PORT/acquirer). Devices are loaded through POST /control/devices or
    --devices; each device's screen is at http://HOST:PORT/kiosk/<device id>."""
    import json

    from channels.kiosk.simulator import create_app

    if parent is not None:
        exit_with_parent(parent)
    devices = json.loads(devices_file.read_text()) if devices_file else []
    app = create_app(devices=devices)
    click.secho(f"kiosk simulator on http://{host}:{port}", fg="green", bold=True)
    click.echo(f"  export PAYGATE_KIOSK_ACQUIRER_URL=http://{host}:{port}/acquirer")
    for d in devices:
        click.echo(f"  kiosk screen: http://{host}:{port}/kiosk/{d['device_id']}")
    serve_simulator(app, host, port)


@simulator.command("pos-terminal")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8104, show_default=True)
@click.option(
    "--terminals",
    "terminals_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='A JSON list of {"merchant", "terminal", "key", "gateway_url"} (the terminals\' keys'
    " as `paygate pos register` gave them).",
)
@click.option(
    "--with-acquirer",
    is_flag=True,
    help="Also play the terminals' acquirer in this process (as `paygate simulator"
    " pos-acquirer`; its secret from PAYGATE_POS_ACQUIRER_SECRET): the terminals book"
    " every card transaction there, and paygate's PAYGATE_POS_ACQUIRER_URL is"
    " http://HOST:PORT/acquirer.",
)
@click.option("--parent", type=int, default=None, help="Exit when this process id exits.")
def simulator_pos_terminal(
    host: str, port: int, terminals_file: Path, with_acquirer: bool, parent: int | None
) -> None:
    """Serve card terminals' displays for a person: inquiry, sale and voucher, void of the
    last sale, settle (http://HOST:PORT/pos/<terminal id>), through the same terminal
    client and journal as `paygate simulator pos`."""
    import json

    from channels.pos import simulator_acquirer
    from channels.pos.terminal_page import create_app

    if parent is not None:
        exit_with_parent(parent)
    terminals = json.loads(terminals_file.read_text())
    acquirer = simulator_acquirer.create_app() if with_acquirer else None
    if acquirer is not None:
        terminals = [{"acquirer_url": f"http://{host}:{port}"} | x for x in terminals]
    app = create_app(terminals, acquirer)
    click.secho(f"POS terminal page on http://{host}:{port}/pos", fg="green", bold=True)
    if acquirer is not None:
        click.echo(
            f"  and their acquirer: export PAYGATE_POS_ACQUIRER_URL=http://{host}:{port}/acquirer"
        )
    serve_simulator(app, host, port)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("scenarios", nargs=-1)
@click.option("--quick", is_flag=True, help="Short runs, for a smoke test.")
def bench(scenarios: tuple[str, ...], quick: bool) -> None:
    """Run benchmark scenarios and print one table (never fails the build)."""
    # A child process, not an import: the service never loads the benchmark harness.
    argv = [sys.executable, "-m", "bench", *scenarios, *(["--quick"] if quick else [])]
    sys.exit(subprocess.call(argv))
