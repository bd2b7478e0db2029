"""`sslbench gallery`: a PNG grid of a pipeline's views, tested in-process."""

from __future__ import annotations

import stat
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
    # readable by others, as results.json: not the 0600 of the temporary file it was
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


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

    from sslbench.tools.gallery import caption, pick_images
    from sslbench.transforms.params import parse_pipeline_spec

    (_, _, lorot_e), (_, _, lorot_i) = (
        parse_pipeline_spec({"lorot": {"variant": v}})[0] for v in ("E", "I")
    )
    # LoRot-E's label 4 q + k: quadrant q (0 top-left .. 3 bottom-right) turned k times
    assert caption("lorot", "lorot", lorot_e, torch.tensor([0, 7]), 1) == (
        "lorot q=1 k=3\ntop-right quarter\nturned 270° ccw"
    )
    assert caption("lorot", "lorot", lorot_e, torch.tensor([12]), 0) == (
        "lorot q=3 k=0\nbottom-right quarter\nnot turned"
    )
    # LoRot-I's label k: a free square patch turned k quarter turns
    k2, k0 = (caption("lorot", "lorot", lorot_i, torch.tensor([k]), 0) for k in (2, 0))
    assert (k2, k0) == ("lorot k=2\npatch turned 180° ccw", "lorot k=0\npatch not turned")
    perm = torch.tensor([[0, 1, 3, 2], [0, 1, 2, 3]])
    rcm = "region_confusion"
    assert caption(rcm, rcm, None, perm, 0) == "region confusion\n2 of 4 tiles moved"
    assert caption(rcm, rcm, None, perm, 1) == "region confusion\nnot shuffled"
    labels = np.array([3, 3, 1, 1, 2, -1])
    assert pick_images(labels, np.arange(6), 3).tolist() == [0, 2, 4]  # one per class first
    assert pick_images(np.full(5, -1), np.arange(5), 3).tolist() == [0, 1, 2]  # unlabelled


def test_view_variants_are_named_by_what_sets_them_apart() -> None:
    from omegaconf import OmegaConf

    from sslbench.config import compose
    from sslbench.tools.gallery import variant_notes
    from sslbench.transforms.pipeline import view_pipelines

    def notes(transform: str, size: int) -> list[str]:
        cfg = compose([f"transform={transform}"])
        return variant_notes(view_pipelines(OmegaConf.to_container(cfg.transform), size))

    # byol.yaml: view 1 always blurred, never solarised; view 2 blurred at 0.1, solarised 0.2
    assert notes("byol", 64) == ["blur p=1, solarize p=0", "blur p=0.1, solarize p=0.2"]
    assert notes("byol", 32) == ["solarize p=0", "solarize p=0.2"]  # no blur at <= 32 px
    assert notes("simclr", 64) == []  # one variant: nothing to tell apart


@needs_fmnist
def test_gallery_names_byol_variants_and_explains_pretext_labels(monkeypatch, tmp_path) -> None:
    from sslbench.config import compose
    from sslbench.tools import gallery

    drawn = {}

    def draw(columns, row_names, title, out) -> None:  # what would be drawn, without drawing
        notes = [note for _, _, column_notes in columns for note in column_notes]
        drawn[out.stem] = ([name for name, _, _ in columns], notes, title)

    monkeypatch.setattr(gallery, "_draw", draw)
    for transform in ("byol", "lorot", "dcl"):
        cfg = compose([f"transform={transform}", "dataset=fashion-mnist", "image_size=64"])
        gallery.make_gallery(cfg, tmp_path / f"{transform}.png", n_images=2, n_views=3)
    names, notes, title = drawn["byol"]
    assert names == ["original", "view 1 (A)", "view 2 (B)", "view 3 (A)"]
    assert title.splitlines()[1:] == [
        "view A: blur p=1, solarize p=0", "view B: blur p=0.1, solarize p=0.2",
    ]  # fmt: skip
    assert not any(notes)  # no pretext labels
    names, notes, _ = drawn["lorot"]
    assert names[1] == "view 1" and all(n.startswith("lorot k=") for n in notes)
    assert all("patch not turned" in n or "patch turned" in n for n in notes)
    _, notes, _ = drawn["dcl"]
    assert all(n.startswith("region confusion\n") and "of 49 tiles moved" in n for n in notes)


@needs_fmnist
def test_gallery_captions_pretext_labels(tmp_path) -> None:
    from omegaconf import open_dict

    from sslbench.config import compose
    from sslbench.tools.gallery import make_gallery

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
