"""`python -m gateway.cli`: the same commands as the `paygate` script."""

from gateway.cli import main

main()
