"""`python -m spul` (and `accelerate launch -m spul ...`) runs the command line; `main` is also the `spul`
console script."""

import sys

from spul.startup import hold_sighup


def main() -> None:
    """Entry point: hold a start-up SIGHUP for `spul serve`, then import and run the command line."""
    hold_sighup(sys.argv)
    from spul.cli import main as run

    run()


if __name__ == "__main__":
    main()
