"""Fiscal e-notes (财政电子票据): `service` issues, red-letters and verifies them; `document`
draws the printed note; `signing`, `signing_lines` and `sign_worker` sign with SM2/SM3 in
separate processes. Kept free of imports so a signing process starts light."""
