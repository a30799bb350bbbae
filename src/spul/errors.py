"""User-facing errors: the CLI prints them as one line, without a traceback."""


class SpulError(Exception):
    """Base class of every error a user can fix (bad input, missing package, unknown spec)."""


class DataError(SpulError):
    """Bad dataset input; the message names the file, the row and the problem."""


class ModelError(SpulError):
    """A model could not be loaded; the message says what to do instead."""
