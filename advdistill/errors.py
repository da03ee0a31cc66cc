"""Errors that stop a stage with a one-line message (the CLI prints them without a traceback)."""


class TrainingError(RuntimeError):
    """Training cannot go on: no data, or a non-finite loss."""
