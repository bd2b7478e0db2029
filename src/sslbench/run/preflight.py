"""Checks of a run's data that need no torch and no cache: done before anything is built.

A ``dataset.path`` that does not exist or holds no images, or a batch larger than the
training set, is a mistake on the command line: it is said in one line in a fraction of a
second, before torch is imported, the cache is built or a run folder is created (which
would otherwise be left behind as a failed run).

A run that can go ahead but will not give what its user probably expects (no scores, a
learning rate that never reaches its peak, a feature map computed from padding) gets
caveats: one-line warnings said before training (:func:`say_caveats`) and kept in
results.json's ``caveats``. :func:`run_caveats` reads the config and the dataset folder
only; :func:`model_caveats` takes what only the built model knows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig, OmegaConf

from sslbench.errors import ConfigError
from sslbench.run.loggers import check_logger_packages


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


def run_caveats(cfg: DictConfig) -> list[str]:
    """One-line warnings about a run that can go ahead but will not give what its user
    probably expects: a dataset without a labelled test split (no linear or kNN scores), a
    learning-rate warm-up as long as the run. Reads the config and the dataset folder's
    layout only (no torch, no cache); a path that :func:`check_run_data` refuses gives none."""
    return [note for note in (_no_scores(cfg), _warmup_longer_than_run(cfg)) if note]


def model_caveats(cfg: DictConfig, stride: int | None) -> list[str]:
    """One-line warnings that need the built backbone: ``stride`` is the input pixels one
    cell of its final feature map spans (``sslbench.nn.backbones.total_stride``). An image
    smaller than that stride gives a 1x1 map computed mostly from the convolutions'
    zero padding."""
    if stride is None or cfg.image_size >= stride:
        return []
    stem = "" if cfg.backbone.small_stem else ", or backbone.small_stem=true (ResNets: 4x less)"
    return [
        f"image_size={cfg.image_size} is smaller than the {stride}-px total stride of "
        f"{cfg.backbone.name}: its final feature map is 1x1 and computed mostly from zero "
        f"padding; use image_size={stride} or more{stem}"
    ]


def say_caveats(caveats: list[str], stream: TextIO | None = None) -> None:
    """Print each caveat as one ``sslbench: warning: ...`` line (standard error)."""
    for note in caveats:
        print(f"sslbench: warning: {note}", file=stream or sys.stderr, flush=True)


def _no_scores(cfg: DictConfig) -> str | None:
    """Why a run's dataset gives no linear or kNN score, for a folder without a labelled
    test split (the catalogue's datasets all have one); None when it does."""
    from sslbench.data.sources import ImageFolder

    given = cfg.dataset.path
    if not cfg.eval.enabled or cfg.dataset.name != "folder" or not given:
        return None
    try:
        folder = ImageFolder(Path(str(given)).expanduser())
    except (OSError, ValueError):  # check_run_data names what is wrong with the path
        return None
    if "test" in folder.splits() and folder.classes:
        return None
    layout = (
        f"put labelled images in {given}/train/<class>/ and {given}/val/<class>/ "
        "(or test/) to have them scored"
    )
    no_scores = "the run pretrains, but there will be no linear probe or kNN scores"
    lone = sorted({"train", "val", "test"} & set(folder.classes))
    if lone:
        return (
            f"dataset.path={given} has {lone[0]}/ but no labelled split beside it, so it is "
            f"read as one folder of classes (class '{lone[0]}') with no test split: "
            f"{no_scores}; {layout}"
        )
    if not folder.classes:
        return (
            f"dataset.path={given} holds images without class folders (unlabelled): "
            f"{no_scores}; {layout}"
        )
    return (
        f"dataset.path={given} has no labelled test split (no train/ and val/ or test/ "
        f"subfolders): {no_scores}; {layout}"
    )


def _warmup_longer_than_run(cfg: DictConfig) -> str | None:
    """A linear warm-up at least as long as the run: the learning rate never passes the
    fraction epochs / warmup_epochs of its peak (VICReg's 20 epochs, from lightly's
    200-epoch benchmark, at epochs=4: a fifth)."""
    warmup = OmegaConf.select(cfg, "method.optimizer.warmup_epochs", default=None) or 0.0
    epochs = cfg.epochs
    if warmup <= 0 or warmup < epochs:
        return None
    reached = (
        "its peak only at the last step"
        if warmup == epochs
        else f"only {epochs / warmup:.0%} of its peak (at the last step)"
    )
    return (
        f"method.optimizer.warmup_epochs={warmup:g} is "
        f"{'as long as' if warmup == epochs else 'longer than'} the run (epochs={epochs}): the "
        f"learning rate rises from 0 for the whole run and reaches {reached}; a tenth of "
        f"the run, as in lightly's benchmark (20 of 200 epochs), is "
        f"method.optimizer.warmup_epochs={epochs / 10:g}"
    )
