"""The Alipay channel's configuration: plain values, built by the service's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AlipayConfig",
]


@dataclass(frozen=True, slots=True)
class AlipayConfig:
    """The Alipay channel; disabled unless `PAYGATE_ALIPAY_APP_ID` is set.

    Keys come from a path or inline PEM (env), never from the repository: the app private
    key is PKCS#1 (`BEGIN RSA PRIVATE KEY`, what the SDK loads), Alipay's public key SPKI
    (`BEGIN PUBLIC KEY`).
    """

    app_id: str = ""
    gateway_url: str = "https://openapi.alipay.com/gateway.do"
    app_private_key_path: Path | None = None
    app_private_key_pem: str = ""
    alipay_public_key_path: Path | None = None
    alipay_public_key_pem: str = ""
    notify_base_url: str = ""
    """Base URL Alipay posts notifications to; empty means `server.public_url`."""
    pool_size: int = 8
    """Worker threads for the blocking SDK: at most this many calls in flight."""
    timeout_s: float = 10.0
    """Per call: connect + read on the socket, and the bound on the whole call."""
    sign_type: str = "RSA2"

    @property
    def enabled(self) -> bool:
        return bool(self.app_id)

    def app_private_key(self) -> str:
        return self._pem(self.app_private_key_pem, self.app_private_key_path, "private")

    def alipay_public_key(self) -> str:
        return self._pem(self.alipay_public_key_pem, self.alipay_public_key_path, "public")

    @staticmethod
    def _pem(inline: str, path: Path | None, what: str) -> str:
        if inline:
            return inline
        if path is not None:
            return path.read_text(encoding="ascii")
        raise ValueError(f"Alipay {what} key not configured (path or PEM)")
