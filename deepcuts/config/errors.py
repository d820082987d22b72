"""One exception type for every problem a user can fix (bad config, bad data, bad files)."""


class ConfigError(ValueError):
    """Raised before any training when the input cannot work; the message says how to fix it."""
