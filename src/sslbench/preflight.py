"""Checks of a run's data that need no torch and no cache: done before anything is built.

A ``dataset.path`` that does not exist or holds no images, or a batch larger than the
training set, is a mistake on the command line: it is said in one line in a fraction of a
second, before torch is imported, the cache is built or a run folder is created (which
would otherwise be left behind as a failed run).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sslbench.config import ConfigError
from sslbench.loggers import check_logger_packages


def check_run_data(cfg: DictConfig) -> None:
    """Raise ConfigError if the run's dataset path or size cannot work, or a logger it asks
    for is not installed."""
    train_images = _check_path(cfg)
    _check_batch_fits(cfg, train_images)
    check_logger_packages(cfg)


def _check_path(cfg: DictConfig) -> int | None:
    """Check ``dataset.path``; return the folder dataset's training images (None otherwise:
    the catalogue knows the others' sizes)."""
    from sslbench.data.extract import SUFFIXES
    from sslbench.data.sources import ImageFolder

    name, given = cfg.dataset.name, cfg.dataset.path
    if not given:
        return None
    path = Path(str(given)).expanduser()
    if not path.exists():
        raise ConfigError(f"dataset.path={given} does not exist")
    if name == "folder":
        if not path.is_dir():
            raise ConfigError(f"dataset.path={given} is a file; dataset=folder reads a folder")
        try:
            return ImageFolder(path).count("train")
        except ValueError as err:  # no images in it
            raise ConfigError(f"dataset.path={given}: {err}") from None
    if path.is_file() and not path.name.lower().endswith(SUFFIXES):
        raise ConfigError(
            f"dataset.path={given} is neither a folder nor an archive ({', '.join(SUFFIXES)})"
        )
    return None


def _check_batch_fits(cfg: DictConfig, train_images: int | None) -> None:
    from sslbench.data.catalog import CATALOG

    info = CATALOG.get(cfg.dataset.name)
    if train_images is None and info is not None and info.train is not None:
        train_images = info.train + (info.unlabeled or 0)  # at most what pretraining can use
    limit = cfg.dataset.max_train
    what = f"the {train_images} training images of {cfg.dataset.name}"
    if limit is not None and (train_images is None or limit < train_images):
        train_images, what = limit, f"dataset.max_train={limit} training images"
    if train_images is None or cfg.batch_size <= train_images:
        return
    fits = 1 << (train_images.bit_length() - 1) if train_images >= 2 else None
    hint = f"batch_size={fits} fits" if fits else "the run needs at least 2 images"
    raise ConfigError(f"batch_size={cfg.batch_size} is more than {what}; {hint}")
