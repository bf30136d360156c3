"""MIS-POS card terminals at agency counters: adapter (verify, parse, render), transforms
(pure protocol), simulator (a terminal, for tests and the demo)."""
