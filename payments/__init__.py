"""The money of a bill: payment attempts (claim, call, record), exactly-once confirmation,
channel notifications, the service for channels that call us, reversal, refunds, card
terminals at the counter, and the ways a payer can pay."""
