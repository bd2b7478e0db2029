"""A ViT's evaluated features: its class token or the mean of its patch tokens
(``eval.pool``), the method's own choice by default, recorded with every protocol's settings
so that the report never averages runs scored on different features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FMNIST, TINY_RUN, needs_fmnist, one_line_error

from sslbench.cli import main
from sslbench.config.validate import POOLS
from sslbench.errors import ConfigError
from sslbench.methods import METHODS, method_class
from sslbench.nn.backbones import TOKEN_POOLS, TokenPooled, create_backbone, has_tokens

#: timm's ViT-Ti/16 made a ViT-Ti/8 for the tiny runs' 32-px images (16 patches).
VIT = ["backbone=vit_tiny_patch16_224", "backbone.patch_size=8"]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_cls_is_the_class_token_and_avg_the_mean_of_the_patch_tokens() -> None:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=8).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # (N, 1 + 16, D), after the final norm
        cls, avg = TokenPooled(vit, "cls")(x), TokenPooled(vit, "avg")(x)
        torch.testing.assert_close(cls, tokens[:, 0])
        torch.testing.assert_close(cls, vit(x))  # timm's own pooling of this ViT
        torch.testing.assert_close(avg, tokens[:, vit.num_prefix_tokens :].mean(dim=1))
    assert not torch.allclose(cls, avg)
    assert TokenPooled(vit, "avg").num_features == 192
    assert has_tokens(vit) and not has_tokens(create_backbone("resnet10t"))


def test_the_configs_pools_are_the_ones_the_backbone_pools_by() -> None:
    assert set(POOLS) == set(TOKEN_POOLS)
    assert {method_class(name).eval_pool for name in METHODS} <= set(POOLS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.pool=max"], "eval.pool must be one of cls, avg or null (the method's own); got"),
        (["eval.pool=avg"], "eval.pool=avg is for ViTs (features pooled from tokens); resnet10t's"),
    ],
)  # fmt: skip
def test_a_pool_that_cannot_apply_exits_2_before_the_run_folder(
    tmp_path, capsys, overrides: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", *TINY_RUN, *overrides, f"run_dir={run_dir}"]) == 2
    assert message in one_line_error(capsys)
    assert not run_dir.exists()


def test_a_vit_without_a_class_token_cannot_be_scored_on_it() -> None:
    vit = create_backbone("vit_tiny_patch16_224", image_size=32)
    vit.has_class_token = False  # as timm's class_token=False ViTs (I-JEPA's) say
    with pytest.raises(ConfigError, match="has no class token; use eval.pool=avg"):
        TokenPooled(vit, "cls")


@pytest.fixture(scope="module")
def vit_run(module_folder: Path) -> Path:
    if not FMNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data)")
    run_dir = module_folder / "vit"
    args = ["pretrain", "method=simclr", *TINY_RUN, *VIT, "eval.few_shot=false",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(args) == 0
    return run_dir


@needs_fmnist
def test_a_vit_run_records_the_pool_of_every_protocol_and_eval_can_score_the_other(
    vit_run, tmp_path
) -> None:
    import shutil

    results = _results(vit_run)
    assert results["linear_top1"] is not None
    pools = {name: settings.get("pool") for name, settings in results["evaluations"].items()}
    assert pools and set(pools.values()) == {"cls"}  # SimCLR's own: the class token

    run_dir = tmp_path / "copy"
    shutil.copytree(vit_run, run_dir)
    assert main(["eval", f"run_dir={run_dir}", "eval.pool=avg"]) == 0
    again = _results(run_dir)
    assert {s.get("pool") for s in again["evaluations"].values()} == {"avg"}
    assert again["linear_top1"] is not None and again["knn_top1"] is not None
