"""The bank channel of DOMAIN §5: adapter (calls), transforms (pure), simulator (tests/demo)."""
