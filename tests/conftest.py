"""Shared fixtures: a fixed batch of real Fashion-MNIST images and built methods."""

from __future__ import annotations

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
    import io
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
