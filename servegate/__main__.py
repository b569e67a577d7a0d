"""`python -m servegate ...` runs the `servegate` command."""

from servegate.cli import main

main()
