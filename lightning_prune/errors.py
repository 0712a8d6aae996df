"""Error types. Each derives from a built-in so callers can catch ``ValueError`` as usual."""


class PruneConfigError(ValueError):
    """A retrain or search config is invalid: the message names the file, field or layer, and the fix."""


class RecordError(ValueError):
    """A record file is unreadable, or was made for another model."""


__all__ = ["PruneConfigError", "RecordError"]
