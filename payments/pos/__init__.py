"""Card terminals (MIS-POS) at agency counters: the registry (`terminals`), the
terminal's operations (`service`: sale, void, refund, reversal, batch settlement)."""
