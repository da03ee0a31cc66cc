"""Exceptions of the package."""


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for explicitly cannot run here (the message says why)."""
