"""`python -m serving.cli ...` (MLproject's entry points) is the `segments` command."""

from serving.cli import main

main()
