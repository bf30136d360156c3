"""The bank channel (docs/channels/bank.md): adapter (our calls), inbound (its calls), transforms
(pure), simulator (tests/demo)."""
