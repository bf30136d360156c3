"""The self-service kiosk channel: transforms (pure: signing, messages, result codes),
adapter (our calls to the kiosks' acquirer; answers signed), simulator (tests/demo)."""
