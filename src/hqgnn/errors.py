"""The one exception type that user-facing code raises for bad input.

The CLI turns it into a single line on stderr and a non-zero exit, so every
message must name the file / line / setting and the offending value.
"""


class HQGNNError(Exception):
    """Bad input or settings: the message is shown to the user as one line."""


class DataError(HQGNNError):
    """A data file is malformed, empty or inconsistent."""


class ConfigError(HQGNNError):
    """An unknown setting or an out-of-range value."""


class CheckpointError(HQGNNError):
    """A checkpoint or exported artifact is missing, corrupt or mismatched."""
