"""`python -m kokoro_opt` runs the CLI."""

from kokoro_opt.cli import main

main()
