"""Messages a new user must see, in one line each (issue 22, point 5): caveats said before
training (no test split, a warm-up longer than the run, an image smaller than the backbone's
stride), unreadable images, a ViT built for another size, and mistakes in YAML files named
by file, line and key."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from sslbench.cli import main
from sslbench.config import compose
from sslbench.errors import ConfigError


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")


def _folder_run(path: Path, *overrides: str):
    return compose(["dataset=folder", f"dataset.path={path}", "batch_size=4", *overrides])


def test_a_folder_without_a_test_split_is_said_to_give_no_scores(tmp_path) -> None:
    from sslbench.run.preflight import run_caveats

    labelled = tmp_path / "labelled"
    for name in ("cats", "dogs"):
        _images(labelled / name, 4)
    (note,) = run_caveats(_folder_run(labelled))
    assert f"dataset.path={labelled} has no labelled test split" in note
    assert "no linear probe or kNN scores" in note
    assert f"{labelled}/train/<class>/ and {labelled}/val/<class>/" in note

    flat = tmp_path / "flat"
    _images(flat, 8)
    (note,) = run_caveats(_folder_run(flat))
    assert "without class folders (unlabelled)" in note and "no linear probe" in note

    # train/<class>/ alone is read as one class named 'train': said, with the layout to use
    lone = tmp_path / "lone"
    for name in ("cats", "dogs"):
        _images(lone / "train" / name, 4)
    (note,) = run_caveats(_folder_run(lone))
    assert "has train/ but no labelled split beside it" in note and "class 'train'" in note

    split = tmp_path / "split"
    for part in ("train", "val"):
        for name in ("cats", "dogs"):
            _images(split / part / name, 4)
    assert run_caveats(_folder_run(split)) == []
    assert run_caveats(_folder_run(labelled, "eval.enabled=false")) == []  # asked for none
    assert run_caveats(compose([])) == []  # the catalogue's datasets have test splits


CAVEATS_WITHOUT_TORCH = """
import sys
from sslbench.config import compose
from sslbench.run.preflight import run_caveats
notes = run_caveats(compose(["dataset=folder", "dataset.path={path}", "method=vicreg",
                             "epochs=4"]))
print(len(notes), "torch" in sys.modules)
"""


def test_run_caveats_need_no_torch(tmp_path) -> None:
    """They are said before anything is built, as check_run_data's errors are."""
    _images(tmp_path / "a", 4)
    done = subprocess.run(
        [sys.executable, "-c", CAVEATS_WITHOUT_TORCH.format(path=tmp_path / "a")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip() == "2 False", done.stderr


def test_a_warm_up_longer_than_the_run_is_said_with_its_key() -> None:
    from sslbench.run.preflight import run_caveats

    (note,) = run_caveats(compose(["method=vicreg", "epochs=4"]))
    assert "method.optimizer.warmup_epochs=20 is longer than the run (epochs=4)" in note
    assert "only 20% of its peak" in note and "method.optimizer.warmup_epochs=0.4" in note
    (note,) = run_caveats(compose(["method=vicreg", "epochs=20"]))
    assert "as long as the run" in note and "its peak only at the last step" in note
    assert run_caveats(compose(["method=vicreg", "epochs=200"])) == []  # lightly's 20 of 200
    assert run_caveats(compose(["method=simclr", "epochs=1"])) == []  # no warm-up


def test_caveats_are_sslbench_lines() -> None:
    from sslbench.run.preflight import say_caveats

    out = io.StringIO()
    say_caveats(["one", "two"], out)
    assert out.getvalue() == "sslbench: warning: one\nsslbench: warning: two\n"


def test_an_image_smaller_than_the_backbones_stride_is_said() -> None:
    from sslbench.nn.backbones import create_backbone, feature_map_shape, total_stride
    from sslbench.run.preflight import model_caveats

    resnet = create_backbone("resnet10t")
    assert total_stride(resnet) == 32
    assert feature_map_shape(resnet, 7)[1:] == (1, 1)  # a 1x1 map of mostly padding
    small = create_backbone("resnet10t", small_stem=True)
    assert total_stride(small) == 8 and feature_map_shape(small, 32)[1:] == (4, 4)
    assert total_stride(create_backbone("vit_tiny_patch16_224")) == 16

    (note,) = model_caveats(compose(["backbone=resnet10t", "image_size=7"]), 32)
    assert "image_size=7 is smaller than the 32-px total stride of resnet10t" in note
    assert "1x1" in note and "image_size=32" in note and "backbone.small_stem=true" in note
    (note,) = model_caveats(compose(["image_size=7", "backbone.small_stem=true"]), 8)
    assert "image_size=8" in note and "small_stem" not in note
    # the demo's setting: a 1x1 map that covers the image, not padding
    assert model_caveats(compose(["backbone=resnet10t", "image_size=32"]), 32) == []
    assert model_caveats(compose(["image_size=7"]), None) == []


def test_a_vit_is_built_for_the_runs_image_size_and_patch_size() -> None:
    import torch

    from sslbench.nn.backbones import create_backbone

    vit = create_backbone("vit_tiny_patch16_224", image_size=32)
    assert vit.pos_embed.shape == (1, 1 + 2 * 2, 192)  # 16-px patches: a 2x2 grid
    vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=4)
    assert vit.pos_embed.shape == (1, 1 + 8 * 8, 192)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 192)
    assert create_backbone("resnet10t", image_size=7) is not None  # CNNs take any size


@pytest.mark.parametrize(
    ("name", "patch_size", "message"),
    [
        ("vit_tiny_patch16_224", 5, "backbone.patch_size=5 does not tile image_size=32"),
        ("resnet10t", 4, "backbone.patch_size=4: 'resnet10t' has no patch embedding"),
    ],
)
def test_a_patch_size_that_cannot_be_built_is_refused_when_built(
    name: str, patch_size: int, message: str
) -> None:
    from sslbench.nn.backbones import create_backbone

    with pytest.raises(ConfigError) as err:
        create_backbone(name, image_size=32, patch_size=patch_size)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_images_are_one_sslbench_line(tmp_path, capsys, recwarn) -> None:
    from sslbench.data import load_or_build
    from sslbench.data.sources import ImageFolder

    root = tmp_path / "ds"
    for name in ("a", "b"):
        _images(root / name, 4)
    for i in range(5):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"not an image")
    cached = load_or_build(ImageFolder(root), "train", 8, tmp_path / "cache", progress=False)
    assert len(cached) == 8 and len(cached.meta["skipped"]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslbench: warning: folder/train: "), err
    assert "skipped 5 unreadable images (a/bad0.jpg, a/bad1.jpg, a/bad2.jpg and 2 more)" in err
    assert "goes on without them" in err and "dataset.strict=true" in err
    assert not [w for w in recwarn if "unreadable" in str(w.message)]  # no Python warning


def test_a_yaml_syntax_error_names_its_file_line_and_column(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nops: [1, 2\nname: x\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    err = one_line_error(capsys)
    assert f"cannot read config file {bad}: line 3, column 5" in err
    assert "while parsing a flow sequence that starts at line 2, column 6" in err
    assert main(["pretrain", f"transform={bad}"]) == 2
    assert f"transform file {bad}: line 3, column 5" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("how", "text", "named"),
    [
        ("--config", "epochs: abc\n", "config file {f}: epochs must be int, got 'abc'"),
        ("--config", "batch_size: [1]\n", "config file {f}: batch_size must be int, got [1]"),
        ("--config", "eval:\n  knn_k: x\n", "config file {f}: eval.knn_k must be int, got 'x'"),
        ("--config", "epoch: 3\n", "config file {f}: unknown key 'epoch'; valid keys: "),
        ("--config", "method:\n  optimizer:\n    lr: fast\n",
         "config file {f}: method.optimizer.lr must be float, got 'fast'"),
        ("experiment", "epochs: abc\n", "experiment file {f}: epochs must be int, got 'abc'"),
        ("transform", "defaults: [simclr, _self_]\nops:\n  color_jitter:\n    brightness: abc\n",
         "transform file {f}: ops.color_jitter.brightness must be float, got 'abc'"),
        ("dataset", "name: folder\nmax_train: [2]\n",
         "dataset file {f}: max_train must be int or null, got [2]"),
    ],
)  # fmt: skip
def test_a_wrong_value_in_a_file_names_its_key_and_the_file(
    how, text, named, tmp_path, capsys
) -> None:
    file = tmp_path / "my.yaml"
    file.write_text(text)
    args = ["--config", str(file)] if how == "--config" else [f"{how}={file}"]
    assert main(["pretrain", *args, "--dry-run"]) == 2
    assert named.format(f=file) in one_line_error(capsys)


def test_a_saved_config_still_loads(tmp_path, capsys) -> None:
    """The file check accepts every key a run's own config.yaml holds."""
    from omegaconf import OmegaConf

    saved = tmp_path / "config.yaml"
    cfg = compose(["method=vicregl", "transform=byol", "pretext=none", f"run_dir={tmp_path}"])
    saved.write_text(OmegaConf.to_yaml(cfg))
    assert main(["pretrain", "--config", str(saved), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == f"1 run: {tmp_path}"
