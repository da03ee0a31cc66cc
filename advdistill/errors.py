"""Every error the project defines, in one place: those the user can act on (a config value, an input file,
the output disk), and :class:`BadRow`, which never leaves the dataset adapters.

The CLI prints an :class:`AdvDistillError` in one line and exits 2 (``--debug`` adds its traceback); any other
exception is a bug and keeps its traceback (exit 1). The older error types keep their standard base
(``ValueError``/``RuntimeError``) beside the common one, so code that caught those still does. Import them from
here: no other module re-exports them.
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


class DeviceError(AdvDistillError, RuntimeError):
    """A GPU stage sees no CUDA device although ``resources.gpu_rules`` asked for one."""


class MemoryPlanError(ConfigError):
    """A stage does not fit the GPU memory of ``resources.gpu_mem_gb``."""


class BadRow(ValueError):
    """A raw dataset record that cannot be normalised; the message is the reason that gets counted.

    :func:`advdistill.datasets.base.normalise_split` catches it and skips the record, so it is no
    :class:`AdvDistillError`: the user sees the count in the prepare report, not an error.
    """
