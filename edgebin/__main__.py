"""`python -m edgebin` is the `edgebin` command."""

from edgebin.cli import main

main()
