"""The one error type of :mod:`cocodag`: a bad input or option, reported to the user in one line."""


class CocodagError(ValueError):
    """A user-facing error: the message names the file/argument, what was expected and what was found."""
