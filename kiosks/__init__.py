"""Self-service kiosks (自助终端) in public halls, which take payments and call us.

The registry of devices and their keys, the per-device sequence numbers with their gaps,
heartbeats, and the kiosk's conversation (query, confirm, store-and-forward upload,
reprint). It sits above `enotes` because a kiosk prints the e-note's verification QR.
"""
