"""Every route handler the app serves; features add their controllers here."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from gateway.finance import FinanceController
from gateway.health import HealthController
from gateway.pages import index

ROUTES: list[ControllerRouterHandler] = [
    HealthController,
    FinanceController,
    index,
]
