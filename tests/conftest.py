"""Shared fixtures: a fixed batch of real Fashion-MNIST images, built methods, one finished
tiny run for the tests that only read it, and a small generated image folder for the tests of
a run's lifecycle, which need no real data."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make data)"
)

#: A tiny but complete run: small timm ResNet, 2 optimiser steps, a few hundred real images.
TINY_RUN = [
    "dataset=fashion-mnist", "backbone=resnet10t", "image_size=32", "dataset.max_train=128",
    "dataset.max_test=64", "epochs=1", "batch_size=64", "eval.linear_max_iter=30",
    "progress_bar=false",
]  # fmt: skip


#: The learning tests' setting beside ``experiment=demo`` (tests/methods/test_methods_learn.py,
#: and `sslbench demo` in tests/run/test_pretrain.py): the demo's data, backbone and probe on
#: fewer images. The backbone starts as timm's ResNets do (the last batch norm of each block
#: at 0), not as torchvision's (the default, backbone.zero_init_last=false): from torchvision's
#: start, random features already reach 0.800 linear here, and in 3 epochs SimSiam, BYOL,
#: VICReg and SwAV do not beat them, in lightly's own code either (docs/benchmarks.md); from
#: timm's start every method shows what it learned within this budget. The probe's L2 is
#: chosen on one held-out fifth (eval.linear_folds=0) instead of 5 folds: the same probe on
#: both sides, about a third of the evaluation's time (most of each learning test's).
LEARNING_RUN = [
    "dataset.max_train=4000", "dataset.max_test=1000", "backbone.zero_init_last=true",
    "eval.linear_folds=0",
]  # fmt: skip


def one_line_error(capsys) -> str:
    """The command's standard error, checked to be one ``sslbench: error: ...`` line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("sslbench: error: ") and "\n" not in err, err
    return err


def make_tar(
    files: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None
) -> bytes:
    """A tar archive (compression from ``mode``) of ``files`` (name -> content), plus symbolic
    ``links`` (name -> target), built in memory for the download and dataset tests."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    return buf.getvalue()


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for the runs one test module shares, removed when its tests are done: a
    module's checkpoints and worker files are hundreds of MB (tmp_path's go with each test)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """One decode-once cache per test session, never the user's own cache folder."""
    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def fmnist_batch(tmp_path_factory):
    """(images uint8 (64, 3, 28, 28), aspect float32 (64,), labels int64 (64,)): a fixed,
    class-balanced batch of real Fashion-MNIST training images, as tensors."""
    if not FMNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data)")
    import torch

    from sslbench.data import get_source, load_or_build, stratified_subset

    cache = tmp_path_factory.mktemp("fmnist-cache")
    split = load_or_build(get_source("fashion-mnist"), "test", 28, cache_root=cache, progress=False)
    idx = stratified_subset(split.labels, 64, seed=0)
    return (
        torch.from_numpy(np.ascontiguousarray(split.images[idx])),
        torch.from_numpy(np.ascontiguousarray(split.aspect[idx])),
        torch.from_numpy(split.labels[idx]).long(),
    )


def build_method(*overrides: str):
    """A method module built exactly as `sslbench pretrain` would, on the CPU (no Trainer).

    Defaults: resnet10t at 32 px (small and fast); pass overrides like "method=byol"."""
    from sslbench.config import compose
    from sslbench.run.build import build_method as build

    cfg = compose(["backbone=resnet10t", "image_size=32", "device=cpu", *overrides])
    return build(cfg, "cpu"), cfg


def correlated_views(n: int = 16, seed: int = 0, size: int = 32):
    """Two global views (n, 3, size, size) of seeded noise images, the second the first plus
    half as much noise again: a batch for a method's ``training_loss``, no augmentation."""
    import torch

    from sslbench.methods.base import Views

    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, size, size, generator=generator)
    x1 = x0 + 0.5 * torch.randn(n, 3, size, size, generator=generator)
    return Views(global_views=[x0, x1], local_views=[])


def configured_optimizers(method, steps: int, epochs: int) -> dict:
    """``method.configure_optimizers()`` as a Trainer of ``steps`` optimiser steps over
    ``epochs`` epochs would call it (it reads the step counts from its Trainer)."""
    from types import SimpleNamespace

    method._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=epochs)
    try:
        return method.configure_optimizers()
    finally:
        method._trainer = None


def method_names(*, local_views: bool | None = None) -> list[str]:
    """The registered methods (sslbench.methods.METHODS), for tests parametrised over every
    method: all of them, or only those whose conf/method/NAME.yaml has (True) or lacks
    (False) a ``local_views`` section. Read from the YAML, not composed: it runs at
    collection."""
    from omegaconf import OmegaConf

    import sslbench
    from sslbench.methods import METHODS

    conf = Path(sslbench.__file__).parent / "conf" / "method"
    names = list(METHODS)
    if local_views is None:
        return names
    return [
        n for n in names if ("local_views" in OmegaConf.load(conf / f"{n}.yaml")) == local_views
    ]


def small_method(name: str, *overrides: str):
    """Method ``name`` built as by build_method, with its class's small_overrides (narrow
    heads, two local views: cheap on a CPU) before ``overrides``."""
    from sslbench.methods import method_class

    return build_method(f"method={name}", *method_class(name).small_overrides, *overrides)


def method_params(fast: str = "simclr", names: list[str] | None = None) -> list:
    """``names`` (default: every registered method) as pytest parameters for a test that
    trains a whole run per method: ``fast`` in the fast suite, every other one marked slow
    (a run each, minutes on a CPU all together)."""
    return [
        name if name == fast else pytest.param(name, marks=pytest.mark.slow)
        for name in (method_names() if names is None else names)
    ]


@pytest.fixture(scope="session")
def _finished_simclr(tmp_path_factory) -> tuple[Path, str]:
    """(run folder, what the command printed) of the tiny SimCLR run of ``finished_run``."""
    if not FMNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data)")
    from sslbench.cli import main

    run_dir = tmp_path_factory.mktemp("finished-run") / "run"
    out = io.StringIO()
    # _cache_in_tmp is per test and runs after session fixtures: the same cache, set here.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["pretrain", "method=simclr", *TINY_RUN, f"run_dir={run_dir}"]) == 0
    return run_dir, out.getvalue()


@pytest.fixture(scope="session")
def finished_run(_finished_simclr) -> Path:
    """A completed tiny SimCLR run (``method=simclr`` and TINY_RUN, evaluated), made once per
    session and shared by every test that asks for it. Never change it: a test that writes
    to a run folder (`sslbench eval`, a rerun, an edited file) first copies it with
    ``shutil.copytree(finished_run, tmp_path / ...)`` and changes the copy."""
    return _finished_simclr[0]


@pytest.fixture(scope="session")
def finished_run_output(_finished_simclr) -> str:
    """What ``sslbench pretrain`` printed to standard output making ``finished_run``."""
    return _finished_simclr[1]


#: The generated image folder: 4 classes, each its own colour and shape, 32x32 PNG files.
SYNTHETIC_CLASSES = ("red_square", "green_disc", "blue_bar", "yellow_cross")
SYNTHETIC_COUNTS = {"train": 40, "test": 16}


def _synthetic_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A 32x32 RGB picture of class ``label``: a dim noisy background and the class's shape
    in the class's colour, at a random place and size."""
    side = 32
    image = rng.integers(0, 60, size=(side, side, 3), dtype=np.uint8)
    colour = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)][label])
    size = int(rng.integers(10, 18))
    top, left = (int(v) for v in rng.integers(0, side - size, size=2))
    y, x = np.mgrid[0:size, 0:size]
    half, thick = (size - 1) / 2, max(size // 4, 2)
    shape = [
        np.ones((size, size), bool),  # filled square
        (y - half) ** 2 + (x - half) ** 2 <= half**2,  # disc
        np.abs(y - half) < thick,  # horizontal bar
        (np.abs(y - half) < thick / 2) | (np.abs(x - half) < thick / 2),  # cross
    ][label]
    jitter = rng.integers(-20, 21, size=3)
    patch = image[top : top + size, left : left + size]
    patch[shape] = np.clip(colour + jitter, 0, 255).astype(np.uint8)
    return image


@pytest.fixture(scope="session")
def synthetic_images(tmp_path_factory) -> Path:
    """A generated labelled image folder (root/train/CLASS/*.png, root/test/CLASS/*.png:
    4 classes of 40 train and 16 test 32x32 images, seed 0), for the run tests that need
    images but not Fashion-MNIST's. Read-only, as the datasets are."""
    from PIL import Image

    root = tmp_path_factory.mktemp("synthetic-images")
    rng = np.random.default_rng(0)
    for split, count in SYNTHETIC_COUNTS.items():
        for label, name in enumerate(SYNTHETIC_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_synthetic_image(rng, label)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_run(synthetic_images) -> list[str]:
    """TINY_RUN's overrides with ``synthetic_images`` for Fashion-MNIST (the folder dataset):
    the same 128 train / 64 test images, 2 optimiser steps an epoch."""
    dataset = ["dataset=folder", f"dataset.path={synthetic_images}"]
    return [*dataset, *(o for o in TINY_RUN if not o.startswith("dataset="))]
