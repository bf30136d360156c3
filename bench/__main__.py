"""`python -m bench [scenario …] [--quick]`: run benchmark scenarios and print one table."""

import sys

from bench.runner import run

args = sys.argv[1:]
sys.exit(run([a for a in args if a != "--quick"], quick="--quick" in args))
