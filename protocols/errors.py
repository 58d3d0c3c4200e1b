"""The one exception that malformed wire data raises, whichever codec finds the fault."""


class DecodeError(ValueError):
    """The bytes are not a well-formed message of the kind expected."""
