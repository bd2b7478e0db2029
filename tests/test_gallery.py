"""`sslbench gallery`: a PNG grid of a pipeline's views, tested in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import needs_fmnist

from sslbench.cli import main

SMALL = ["transform=simclr", "dataset=fashion-mnist", "image_size=32", "images=3", "views=4"]


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@needs_fmnist
def test_gallery_writes_a_png_grid(tmp_path, capsys) -> None:
    out = tmp_path / "v.png"
    assert main(["gallery", *SMALL, f"out={out}"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    pixels = _pixels(out)
    height, width, _ = pixels.shape
    assert 200 < height < 1000 and 400 < width < 1500 and width > height  # 3 rows x 5 columns
    assert pixels.std() > 20  # real pictures, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["v.png"]  # no temporary file left


@needs_fmnist
def test_gallery_is_deterministic_and_shows_local_views(tmp_path) -> None:
    paths = {name: tmp_path / f"{name}.png" for name in ("a", "b", "swav", "seed1")}
    for name, extra in (("a", []), ("b", []), ("swav", ["method=swav"]), ("seed1", ["seed=1"])):
        assert main(["gallery", *SMALL, *extra, f"out={paths[name]}"]) == 0
    a, b = _pixels(paths["a"]), _pixels(paths["b"])
    assert np.array_equal(a, b)  # same seed, same picture (PNG metadata aside)
    seed1 = _pixels(paths["seed1"])
    assert seed1.shape != a.shape or not np.array_equal(seed1, a)
    assert _pixels(paths["swav"]).shape[1] > a.shape[1]  # 6 local-view columns


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("images=0", "images"),
        ("views=abc", "abc"),
        ("out=x.jpg", "x.jpg"),
        ("transform=nope", "nope"),
    ],
)
def test_gallery_bad_input_is_one_line(arg, named, tmp_path, capsys) -> None:
    args = ["transform=simclr", f"out={tmp_path / 'v.png'}", arg]
    assert main(["gallery", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sslbench: error:") and named in err
    assert not (tmp_path / "v.png").exists()


def test_captions_and_image_choice() -> None:
    import torch

    from sslbench.gallery import caption, pick_images
    from sslbench.transforms.params import parse_pipeline_spec

    (_, _, lorot_e), (_, _, lorot_i) = (
        parse_pipeline_spec({"lorot": {"variant": v}})[0] for v in ("E", "I")
    )
    assert caption("lorot", "lorot", lorot_e, torch.tensor([0, 7]), 1) == "lorot q=1 k=3"
    assert caption("lorot", "lorot", lorot_i, torch.tensor([2]), 0) == "lorot k=2"
    perm = torch.tensor([[0, 1, 3, 2], [0, 1, 2, 3]])
    assert caption("region_confusion", "region_confusion", None, perm, 0) == "rcm moved 2/4"
    assert caption("region_confusion", "region_confusion", None, perm, 1) == "rcm moved 0/4"
    labels = np.array([3, 3, 1, 1, 2, -1])
    assert pick_images(labels, np.arange(6), 3).tolist() == [0, 2, 4]  # one per class first
    assert pick_images(np.full(5, -1), np.arange(5), 3).tolist() == [0, 1, 2]  # unlabelled


@needs_fmnist
def test_gallery_captions_pretext_labels(tmp_path) -> None:
    from omegaconf import open_dict

    from sslbench.config import compose
    from sslbench.gallery import make_gallery

    cfg = compose(["transform=simclr", "dataset=fashion-mnist", "image_size=32"])
    with open_dict(cfg):
        cfg.transform.ops.lorot = {"variant": "E"}
    out = make_gallery(cfg, tmp_path / "lorot.png", n_images=2, n_views=2)
    plain = make_gallery(compose(["image_size=32"]), tmp_path / "plain.png", 2, 2)
    assert _pixels(out).shape[0] > _pixels(plain).shape[0]  # room for the captions


@needs_fmnist
@pytest.mark.parametrize(
    "transform",
    ["baseline", "simclr", "orthogonality", "lorot", "dcl", "baseline_lorot", "baseline_dcl",
     "byol"],
)  # fmt: skip
def test_gallery_draws_every_packaged_pipeline(transform: str, tmp_path) -> None:
    out = tmp_path / f"{transform}.png"
    args = ["dataset=fashion-mnist", "image_size=32", "images=2", "views=2"]
    assert main(["gallery", f"transform={transform}", *args, f"out={out}"]) == 0
    assert _pixels(out).std() > 20
