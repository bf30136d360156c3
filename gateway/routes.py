"""Every route handler the app serves; features add their controllers here."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from gateway.banks_api import BanksController
from gateway.bills_api import BillsController
from gateway.cashier import CashierController
from gateway.channels_api import InboundController, NotifyController
from gateway.enotes import EnoteController, verify_page
from gateway.finance import FinanceController
from gateway.health import HealthController
from gateway.kiosk_api import KioskAdminController
from gateway.pages import index
from gateway.pay_api import PayController
from gateway.pos_api import PosAdminController
from gateway.webhooks_api import WebhooksController

ROUTES: list[ControllerRouterHandler] = [
    HealthController,
    BillsController,
    FinanceController,
    BanksController,
    index,
    EnoteController,
    verify_page,
    PayController,
    NotifyController,
    InboundController,
    KioskAdminController,
    WebhooksController,
    CashierController,
    PosAdminController,
]
