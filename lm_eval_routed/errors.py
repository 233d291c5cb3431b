"""The one error type users see. A leaf: it imports nothing of the package, so every layer can raise it."""


class ConfigError(ValueError):
    """A user-facing mistake in what a user handed us; its message is one line that says how to fix it."""
