"""`python -m spul` (and `accelerate launch -m spul ...`) runs the command line."""

from spul.cli import main

main()
