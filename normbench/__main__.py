"""`python -m normbench` runs the command-line app."""

from normbench.cli import main

main()
