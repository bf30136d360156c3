"""Alipay channel: `AlipayAdapter` (production, official SDK) and a wire-faithful simulator."""
