"""Every ViT method's tiny run completes (CPU, ViT-Ti at 32 px in 8-px patches, Fashion-MNIST,
128 images, 1 epoch) with every results.json field; MAE's also fine-tuned with the ViT recipe
(AdamW, layer-wise lr decay), and its kNN, linear and fine-tuned numbers side by side in the
report. The methods come from the registry: a new ViT method is picked up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RUN, method_names, method_params, needs_fmnist, small_method

from sslbench.cli import main
from sslbench.methods import method_class
from sslbench.methods.base import TEST_VIT
from sslbench.run.results import CONTRACT_FIELDS

#: The registered methods made for ViTs only (their tests' settings carry the tiny ViT),
#: and DINO, the multi-crop method that runs on both, on the tiny ViT with its ViT recipe.
VIT_METHODS = [n for n in method_names() if method_class(n).backbone_kinds == ("vit",)]
#: MAE's run is also fine-tuned with the ViT recipe (one epoch).
MAE_FINETUNE = (
    "eval.finetune=true", "eval.finetune_epochs=1", "eval.finetune_optimizer=adamw",
    "eval.finetune_lr=5e-4", "eval.finetune_weight_decay=0.05", "eval.finetune_layer_decay=0.65",
)  # fmt: skip


def _run(name: str, folder: Path, *extra: str) -> dict:
    small = method_class(name).small_overrides
    vit = () if any(o.startswith("backbone=vit") for o in small) else TEST_VIT
    # no warm-up: a 1-epoch run would stay near lr 0
    args = [f"method={name}", *TINY_RUN, *small, *vit, "method.optimizer.warmup_epochs=0.0"]
    assert main(["pretrain", *args, *extra, f"run_dir={folder}"]) == 0
    return json.loads((folder / "results.json").read_text())


def test_the_vit_methods_are_the_issues() -> None:
    assert {"mae", "simmim", "ijepa", "ibot", "msn"} <= set(VIT_METHODS)


@needs_fmnist
@pytest.mark.parametrize("name", method_params(fast="ijepa", names=[*VIT_METHODS, "dino"]))
def test_a_tiny_vit_run_completes_with_every_field(name: str, tmp_path) -> None:
    if name == "mae":
        pytest.skip("MAE's run is test_maes_protocols_stand_side_by_side_in_the_report's")
    results = _run(name, tmp_path / "run")
    assert set(CONTRACT_FIELDS) <= set(results)
    assert results["status"] == "completed" and results["error"] is None
    assert results["method"] == name and results["backbone"] == "vit_tiny_patch16_224"
    for key in ("linear_top1", "knn_top1"):
        assert 0.0 <= results[key] <= 1.0, key
    pool = method_class(name).eval_pool
    assert {entry["pool"] for entry in results["evaluations"].values()} == {pool}
    assert results["pretrain_seconds"] > 0 and results["images_per_second"] > 0


@needs_fmnist
def test_maes_protocols_stand_side_by_side_in_the_report(tmp_path, capsys) -> None:
    run_dir = tmp_path / "mae"
    results = _run("mae", run_dir, *MAE_FINETUNE)
    assert set(CONTRACT_FIELDS) <= set(results)
    assert results["evaluations"]["finetune"]["layer_decay"] == 0.65
    assert "AdamW lr 0.0005" in results["finetune"]
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    table = out.split("### Protocols side by side")[1].split("###")[0]
    header, _, row = [line for line in table.splitlines() if line.startswith("|")]
    assert header.split("|")[1:-1] == [
        " method ", " pipeline ", " Linear top-1 ", " kNN top-1 ", " Fine-tuned top-1 "
    ]  # fmt: skip
    assert row.split("|")[1:3] == [" mae ", " simclr "]
    numbers = [cell.split("[^")[0].strip().strip("*") for cell in row.split("|")[3:6]]
    for number, key in zip(numbers, ("linear_top1", "knn_top1", "finetune_top1"), strict=True):
        assert number == f"{results[key]:.3f}", (number, key)


#: The multi-crop ViT methods (the two-view ones are in test_methods_siamese.py's loop).
MULTI_CROP_VIT = ["dino", "ibot", "msn"]


@pytest.mark.parametrize("name", MULTI_CROP_VIT)
def test_steps_on_fixed_views_lower_a_multi_crop_vit_methods_loss(name: str, fmnist_batch) -> None:
    import torch

    from sslbench.methods.views import Views

    torch.manual_seed(0)
    method, _ = small_method(name, *TEST_VIT)
    images, aspect, _ = fmnist_batch
    with torch.no_grad():
        made = method.make_views(images[:16], aspect[:16])
    views = Views(global_views=made.global_views, local_views=made.local_views)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        before = float(method.training_loss(views))
    for _ in range(4):
        optimizer.zero_grad()
        method.training_loss(views).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(method.training_loss(views))
    assert after < before, (before, after)
