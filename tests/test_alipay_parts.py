"""Alipay pieces: pure transforms, the SDK port fix, retry schedule, CLI, registry."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.alipay import transforms
from channels.alipay.adapter import AlipayAdapter
from channels.alipay.keys import KeySet
from channels.alipay.sdk_patch import install_port_fix, open_connection
from channels.alipay.simulator import RETRY_SCHEDULE_S, create_simulator
from channels.alipay.transforms import BEIJING
from channels.base import (
    CreatePayment,
    OutcomeUnknown,
    Rejected,
    StatementKind,
    TradeState,
)
from gateway.procs import free_port
from gateway.settings import Settings
from gateway.state import build_channels
from tests.alipay_support import APP_ID, Receiver, settings_for
from tests.servers import ServerThread

# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("WAIT_BUYER_PAY", TradeState.PENDING),
        ("TRADE_SUCCESS", TradeState.SUCCEEDED),
        ("TRADE_FINISHED", TradeState.FINISHED),
        ("TRADE_CLOSED", TradeState.CLOSED),
        ("TRADE_SOMETHING_NEW", TradeState.PENDING),
        ("", TradeState.PENDING),
        (None, TradeState.PENDING),
    ],
)
def test_status_mapping_is_pessimistic(status: str | None, state: TradeState) -> None:
    assert transforms.trade_state(status) is state


def test_create_biz_amount_string_and_beijing_expiry() -> None:
    req = CreatePayment(
        attempt_id="A1",
        amount=8880,
        subject="s",
        mode="qr",
        expires_at=datetime(2026, 11, 21, 16, 30, tzinfo=UTC),
        notify_url="http://x/n",
    )
    biz = transforms.create_biz(req)
    assert biz["total_amount"] == "88.80"
    assert biz["time_expire"] == "2026-11-22 00:30:00"
    assert biz["out_trade_no"] == "A1"
    with pytest.raises(ValueError, match="mode"):
        transforms.create_biz(CreatePayment("A1", 1, "s", "app", req.expires_at, req.notify_url))


def test_check_result_branches_on_codes_only() -> None:
    ok = {"code": "10000", "msg": "Success", "trade_no": "1"}
    assert transforms.check_result(ok) is ok
    with pytest.raises(Rejected) as rejected:
        transforms.check_result(
            {"code": "40004", "msg": "x", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "任意"}
        )
    assert rejected.value.code == "ACQ.TRADE_NOT_EXIST"
    with pytest.raises(OutcomeUnknown):
        transforms.check_result({"code": "20000", "sub_code": "isp.unknow-error"})
    with pytest.raises(OutcomeUnknown):
        transforms.check_result({"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"})
    with pytest.raises(Rejected):
        transforms.check_result({"code": "40002", "sub_code": "isv.invalid-signature"})


def _bill(header: str, rows: list[str]) -> bytes:
    text = "\r\n".join(["#支付宝业务明细查询", "#账号：[2088]", header, *rows, "#交易合计：1笔"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("2088_20261120_业务明细(汇总).csv", "合计,1".encode("gbk"))
        zf.writestr("2088_20261120_业务明细.csv", text.encode("gbk"))
    return buf.getvalue()


def test_parse_statement_maps_by_header_name_in_any_order() -> None:
    # Columns reordered, half-width parentheses, TAB-padded cells, an unknown row type.
    header = "业务类型,完成时间,订单金额(元),商户订单号,支付宝交易号,服务费(元),退款批次号/请求号"
    raw = _bill(
        header,
        [
            "交易\t,2026-11-20 10:00:00\t,100.05,A1\t,2026112022001\t,-0.60,\t",
            "退款\t,2026-11-20 11:00:00\t,-0.05,A1\t,2026112022001\t,0.00,R1\t",
            "冻结\t,2026-11-20 12:00:00\t,1.00,A2\t,2026112022002\t,0.00,\t",
        ],
    )
    pay, refund = transforms.parse_statement(raw)
    assert (pay.kind, pay.amount, pay.fee, pay.attempt_id) == (
        StatementKind.PAYMENT,
        10005,
        60,  # 服务费 -0.60: Alipay deducted it, so we were charged 60 fen
        "A1",
    )
    assert pay.refund_id is None
    assert pay.occurred_at == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    assert (refund.kind, refund.amount, refund.refund_id) == (StatementKind.REFUND, -5, "R1")
    assert refund.channel_trade_no == "2026112022001"


def test_parse_statement_rejects_a_file_without_the_detail_member() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("other.csv", b"x")
    with pytest.raises(ValueError, match="业务明细"):
        transforms.parse_statement(buf.getvalue())
    with pytest.raises(ValueError, match="header"):
        transforms.parse_statement(_bill("a,b,c", ["1,2,3"]))


# ------------------------------------------------------------------ the SDK port fix


def test_sdk_port_bug_and_our_single_fix() -> None:
    """The unpatched SDK function cannot build a URL with a port (str + int)."""
    from alipay.aop.api.util import WebUtils

    install_port_fix()
    assert WebUtils.get_http_connection.__module__ == "channels.alipay.sdk_patch"
    target, conn = WebUtils.get_http_connection("http://127.0.0.1:8101/gateway.do", "a=1", 3)
    assert (conn.host, conn.port, conn.timeout) == ("127.0.0.1", 8101, 3)
    assert target == "http://127.0.0.1:8101/gateway.do?a=1"  # absolute-form, as the SDK sends
    _, tls = open_connection("https://openapi.alipay.com/gateway.do", 5)
    assert tls.port == 443

    import importlib.util

    spec = importlib.util.find_spec("alipay.aop.api.util.WebUtils")
    assert spec is not None
    assert spec.loader is not None
    pristine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pristine)
    with pytest.raises(TypeError):
        pristine.get_http_connection("http://127.0.0.1:8101/gateway.do", "a=1", 3)


# ------------------------------------------------------------------ notification schedule


async def test_notification_retried_8_times_on_alipays_schedule(
    alipay_keys: KeySet, notify_receiver: Receiver
) -> None:
    # A separate simulator whose 25-hour schedule takes ≈ 1.8 s.
    scale = 0.00002
    sim = create_simulator(
        app_id=APP_ID,
        app_public_key_pem=alipay_keys.app_public.read_text(),
        alipay_private_key_pem=alipay_keys.alipay_private.read_text(),
        time_scale=scale,
    )
    # Only the exact body `success` counts.
    notify_receiver.answers.extend(
        [(500, b"x"), (200, b"SUCCESS"), (200, b"success\n"), *[(500, b"x")] * 5]
    )
    with ServerThread(sim) as srv:
        adapter = AlipayAdapter(
            settings_for(alipay_keys, f"http://127.0.0.1:{srv.port}/gateway.do")
        )
        try:
            created = await adapter.create_payment(
                CreatePayment(
                    "S1",
                    100,
                    "s",
                    "qr",
                    datetime.now(UTC) + timedelta(minutes=5),
                    notify_receiver.url,
                )
            )
            assert created.qr_content
            sim.pay("S1")
            start = time.monotonic()
            bodies = await notify_receiver.wait_for(8, within=30)
            elapsed = time.monotonic() - start
            await asyncio.sleep(sum(RETRY_SCHEDULE_S) * scale * 0.3)
            assert len(notify_receiver.bodies) == 8  # gave up after 8 tries
            ids = {
                adapter.parse_notification(b, notify_receiver.content_types[0]).notify_id
                for b in bodies
            }
            assert len(ids) == 1
            assert elapsed >= sum(RETRY_SCHEDULE_S) * scale * 0.9
            (note,) = sim.notifications
            assert note.delivered is False
            assert len(note.attempts) == 8
        finally:
            await adapter.aclose()


# ------------------------------------------------------------------ registry and CLI


def test_build_channels_registers_alipay_only_when_configured(alipay_keys: KeySet) -> None:
    assert "alipay" not in build_channels(
        Settings(alipay=settings_for(alipay_keys, "x", app_id=""))
    )
    registry = build_channels(Settings(alipay=settings_for(alipay_keys, "http://127.0.0.1:1/g")))
    # `pos` is always there: card terminals are registered in the database, not settings.
    assert registry.names() == ["alipay", "pos"]
    adapter = registry.get("alipay")
    assert isinstance(adapter, AlipayAdapter)
    asyncio.run(adapter.aclose())


def _wait_http(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _talk_to(keys: KeySet, port: int) -> None:
    adapter = AlipayAdapter(settings_for(keys, f"http://127.0.0.1:{port}/gateway.do"))
    try:
        assert (await adapter.query_payment("nothing")).state is TradeState.NOT_FOUND
        with pytest.raises(Rejected) as not_yet:
            await adapter.fetch_statement(datetime.now(BEIJING).date() + timedelta(days=2))
        assert not_yet.value.code == "isp.bill_not_exist"
    finally:
        await adapter.aclose()


@pytest.mark.slow
def test_cli_serves_the_simulator_with_generated_keys(tmp_path: Path) -> None:
    port = free_port()
    keys_dir = tmp_path / "alipay"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "simulator",
            "alipay",
            "--port",
            str(port),
            "--keys-dir",
            str(keys_dir),
            "--app-id",
            APP_ID,
        ],
        env={**os.environ, "PAYGATE_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        assert (keys_dir / "app_private_key.pem").stat().st_mode & 0o077 == 0
        keys = KeySet(
            app_private=keys_dir / "app_private_key.pem",
            app_public=keys_dir / "app_public_key.pem",
            alipay_private=keys_dir / "alipay_private_key.pem",
            alipay_public=keys_dir / "alipay_public_key.pem",
        )
        asyncio.run(_talk_to(keys, port))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
