"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class CmlError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent run directory.

    The message must name the file (and line or field where known) and what was expected.
    """
