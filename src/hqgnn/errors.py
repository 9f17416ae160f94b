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


class TrainingDiverged(HQGNNError):
    """A non-finite loss, weight, GSTE delta or score stopped training.

    The message is one line: the epoch (and batch), what went non-finite, the settings
    that usually cause it, and the last finite checkpoint (or that there is none).
    """


class NonFiniteScores(HQGNNError):
    """A model's ranking scores would be NaN or inf (non-finite weights, or norms that overflow float32)."""
