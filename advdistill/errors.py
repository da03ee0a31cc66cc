"""The project's own errors: the user can act on them (a config value, an input file, the output disk).

The CLI prints an :class:`AdvDistillError` in one line and exits 2 (``--debug`` adds its traceback); any other
exception is a bug and keeps its traceback (exit 1). The older error types keep their standard base
(``ValueError``/``RuntimeError``) beside the common one, so code that caught those still does.
"""


class AdvDistillError(Exception):
    """Base of every error that names what the user has to fix."""


class ConfigError(AdvDistillError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class DatasetError(AdvDistillError, RuntimeError):
    """A dataset as a whole cannot be loaded (missing file, wrong fields, no usable rows)."""


class InputError(AdvDistillError):
    """An input file cannot be read, or lacks, mistypes or corrupts what the stage needs."""


class OutputError(AdvDistillError):
    """An artefact cannot be written (read-only folder, full disk)."""


class TrainingError(AdvDistillError, RuntimeError):
    """Training cannot go on: no data, or a non-finite loss."""
