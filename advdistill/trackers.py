"""Experiment trackers of the ``train`` stage (``training.report_to``, docs/trackers.md): the transformers
integrations a run reports to, the check that each can run here (at planning and again at the start of the train
job, whose environment may be a container), and the run's folder for the trackers that write files (TensorBoard).

Planning imports this module on every Snakemake call, so it imports nothing heavy at module level: transformers'
integrations (seconds) only for a config that names a tracker, and polars (through :mod:`advdistill.io`) only
in the train stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from advdistill.errors import ConfigError

NO_TRACKER = "none"

TRACKER_PACKAGES: dict[str, tuple[str, str | None]] = {
    "azure_ml": ("azureml-core", "is_azureml_available"),
    "clearml": ("clearml", "is_clearml_available"),
    "codecarbon": ("codecarbon", "is_codecarbon_available"),
    "comet_ml": ("comet_ml", None),  # is_comet_available also wants an API key, which offline mode does without
    "dagshub": ("dagshub mlflow", "is_dagshub_available"),
    "dvclive": ("dvclive", "is_dvclive_available"),
    "flyte": ("flytekit flytekitplugins-deck-standard", "is_flyte_deck_standard_available"),
    "mlflow": ("mlflow", "is_mlflow_available"),
    "neptune": ("neptune", "is_neptune_available"),
    "swanlab": ("swanlab", "is_swanlab_available"),
    "tensorboard": ("tensorboard", "is_tensorboard_available"),
    "trackio": ("trackio", "is_trackio_available"),
    "wandb": ("wandb", "is_wandb_available"),
}
"""Each tracker's pip package(s) and the function of ``transformers.integrations.integration_utils`` that says
whether it can run here (None: the package imports), looked up by name when checking."""

REFUSED_TRACKERS = {
    "all": "reports to whichever trackers happen to be installed, so the same config would report differently in "
           "another environment; name the trackers instead",
    "kubeflow": "is turned on by transformers itself inside a Kubeflow TrainJob and cannot run outside one",
}

FOLDER_TRACKERS = ("tensorboard",)
"""Trackers that write into the run's tracker folder (``advdistill train --tracker-dir``)."""


def tracker_names(report_to: str | Sequence[str]) -> list[str]:
    """``training.report_to`` as a list of tracker names; ``none`` is no tracker."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [] if names == [NO_TRACKER] else names


def check_report_to(report_to: str | Sequence[str], key: str) -> None:
    """Every tracker of ``report_to`` (config key ``key``) is one that transformers offers and can run in this
    environment: a :class:`ConfigError` names the key and the package to install."""
    names = tracker_names(report_to)
    if not names:
        return
    from transformers.integrations import integration_utils

    known = sorted(set(integration_utils.INTEGRATION_TO_CALLBACK) - set(REFUSED_TRACKERS)) + [NO_TRACKER]
    for name in names:
        if name in REFUSED_TRACKERS:
            raise ConfigError(f"config {key}: '{name}' {REFUSED_TRACKERS[name]} (trackers: {', '.join(known)})")
        if name == NO_TRACKER:
            raise ConfigError(f"config {key}: 'none' means no tracker and cannot be listed beside trackers "
                              f"({', '.join(names)}); give either 'none' or the trackers")
        if name not in integration_utils.INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"config {key}: '{name}' is not a tracker transformers offers; the trackers: "
                              f"{', '.join(known)}")
        package, available = TRACKER_PACKAGES.get(name, (None, None))
        if package is None:
            continue  # offered by a newer transformers than this table knows: its callback checks at the start
        found = (getattr(integration_utils, available)() if available
                 else importlib.util.find_spec(package) is not None)
        if not found:
            several = " " in package
            raise ConfigError(f"config {key}: '{name}' needs the Python package{'s' * several} "
                              f"{' and '.join(package.split())}, which {'are' if several else 'is'} not installed "
                              f"here (pip install {package}); install {'them' if several else 'it'} where the train "
                              f"jobs run (under --sdm apptainer: in the container image too, docs/trackers.md) or "
                              f"remove '{name}' from {key}")


def default_tracker_dir(out: Path) -> Path:
    """``<out>.trackers``, beside the trained model's folder and not inside it: that folder is written atomically,
    replaced as a whole when the model is saved."""
    return out.with_name(out.name + ".trackers")


@contextlib.contextmanager
def tensorboard_folder(folder: Path | None) -> Iterator[None]:
    """TensorBoard writes into ``folder`` for the trainers made inside this block (None: transformers' default).

    transformers 5 has no ``logging_dir`` training argument any more: its TensorBoard callback reads the folder
    from ``TENSORBOARD_LOGGING_DIR`` when the trainer makes it, and defaults to ``<output_dir>/runs``, inside the
    checkpoint folder that is deleted once the model is saved.
    """
    if folder is None:
        yield
        return
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TENSORBOARD_LOGGING_DIR"]
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def start_tracker_folder(folder: Path, report_to: Sequence[str], resuming: bool) -> None:
    """The tracker folder of a run that starts: kept when it resumes from a checkpoint (the curves go on), emptied
    when it starts from step 0 (the files of an earlier run would mix their curves with this one's); made, with the
    artefact marker that lets a later run empty it, when a tracker of ``report_to`` writes there."""
    from advdistill.io import check_replaceable, write_artefact_marker

    check_replaceable(folder, "train", "--tracker-dir")
    if not resuming and folder.exists():
        shutil.rmtree(folder)
    if any(name in FOLDER_TRACKERS for name in report_to):
        folder.mkdir(parents=True, exist_ok=True)
        write_artefact_marker(folder, "train", "--tracker-dir")
