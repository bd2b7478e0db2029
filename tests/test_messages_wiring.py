"""``sslbench pretrain`` says the caveats of tests/test_messages.py before training and keeps
them in results.json, and refuses a ViT whose patches do not tile the images before its run
folder exists (train.py calls sslbench.run.preflight.run_caveats / model_caveats and passes
image_size and patch_size to create_backbone)."""

from __future__ import annotations

import json

import numpy as np
from conftest import one_line_error
from PIL import Image

from sslbench.cli import main


def test_a_vit_whose_patches_do_not_tile_the_images_exits_2_before_its_run_folder(
    tmp_path, capsys
) -> None:
    run_dir = tmp_path / "run"
    args = ["backbone=vit_tiny_patch16_224", "backbone.patch_size=6", "image_size=32"]
    assert main(["pretrain", *args, "batch_size=8", f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    assert "backbone.patch_size=6 does not tile image_size=32" in err and "e.g. 16" in err
    assert not run_dir.exists()


def test_caveats_are_said_before_training_and_kept_in_results(tmp_path, capsys) -> None:
    """A folder without a test split, VICReg's 20-epoch warm-up at epochs=1 and 16-px images
    through a stride-32 ResNet: three warnings, each one line, before the run trains."""
    folder = tmp_path / "images"
    for c, name in enumerate(("cats", "dogs")):
        (folder / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.full((16, 16, 3), 60 * c + 5 * i, np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    run_dir = tmp_path / "run"
    args = [
        "dataset=folder", f"dataset.path={folder}", "method=vicreg", "backbone=resnet10t",
        "image_size=16", "epochs=1", "batch_size=8", "progress_bar=false", "device=cpu",
        "method.hidden_dim=64", "method.output_dim=64", f"run_dir={run_dir}",
    ]  # fmt: skip
    assert main(["pretrain", *args]) == 0
    warnings = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("sslbench: ")
    ]
    assert len(warnings) == 3, warnings
    assert all(line.startswith("sslbench: warning: ") for line in warnings)
    caveats = json.loads((run_dir / "results.json").read_text())["caveats"]
    assert [f"sslbench: warning: {note}" for note in caveats] == warnings
    assert f"dataset.path={folder} has no labelled test split" in caveats[0]
    assert "method.optimizer.warmup_epochs=20 is longer than the run (epochs=1)" in caveats[1]
    assert "image_size=16 is smaller than the 32-px total stride of resnet10t" in caveats[2]
