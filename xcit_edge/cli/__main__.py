"""`python -m xcit_edge.cli ...`: the console script without the entry point (tests, benchmarks)."""

from xcit_edge.cli import main

main()
