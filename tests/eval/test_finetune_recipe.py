"""The fine-tuning recipe of ViTs beside lightly's: AdamW with weight decay, layer-wise lr
decay through timm's layer groups, a linear warm-up; recorded where it leaves lightly's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sslbench.config import compose
from sslbench.errors import ConfigError
from sslbench.eval.backbone import finetune_recipe
from sslbench.eval.supervised import (
    LabelledImages,
    SupervisedSettings,
    parameter_groups,
    train_and_score,
)
from sslbench.nn.backbones import TokenPooled, create_backbone
from sslbench.transforms import Pipeline


def settings(**changes) -> SupervisedSettings:
    base = {"finetune": True, "epochs": 1, "lr": 5e-4, "batch_size": 16, "seed": 0,
            "optimizer": "adamw", "weight_decay": 0.05, "layer_decay": 0.5}  # fmt: skip
    return SupervisedSettings(**(base | changes))


def test_layer_decay_gives_the_blocks_nearer_the_input_a_smaller_lr() -> None:
    vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=8)
    head = nn.Linear(vit.num_features, 4)
    groups = parameter_groups(vit, head, settings())
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(head.weight)] == 1.0
    embed = scale_of[id(vit.patch_embed.proj.weight)]
    first, last = (scale_of[id(vit.blocks[i].attn.qkv.weight)] for i in (0, -1))
    depth = len(vit.blocks)
    assert embed == pytest.approx(0.5 ** (depth + 1)) and first == pytest.approx(0.5**depth)
    assert last == pytest.approx(0.5)  # MAE's: the last block at decay x the head's lr
    assert scale_of[id(vit.norm.weight)] == 1.0  # the final norm: the head's layer
    decay_of = {id(p): g["weight_decay"] for g in groups[1:] for p in g["params"]}
    assert decay_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    assert decay_of[id(vit.blocks[0].norm1.weight)] == 0.0  # norms and biases: not decayed
    assert decay_of[id(vit.pos_embed)] == 0.0  # timm's no_weight_decay(): pos_embed, cls_token
    every = [p for p in vit.parameters()]
    assert sorted(map(id, every)) == sorted(id(p) for g in groups[1:] for p in g["params"])


def test_a_vit_pooled_one_way_is_decayed_by_its_layers() -> None:
    vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=8)
    pooled = TokenPooled(vit, "avg")
    groups = parameter_groups(pooled, nn.Linear(vit.num_features, 4), settings())
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scales[id(vit.blocks[-1].attn.qkv.weight)] == pytest.approx(0.5)
    assert len(scales) == len(list(pooled.parameters())) + 2  # the head's weight and bias


def test_without_layer_decay_every_backbone_parameter_learns_at_the_heads_lr() -> None:
    vit = create_backbone("resnet10t")
    groups = parameter_groups(vit, nn.Linear(512, 4), settings(layer_decay=None))
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0]
    assert len(parameter_groups(vit, nn.Linear(512, 4), settings(finetune=False))) == 1


def test_a_model_that_does_not_say_its_layers_cannot_decay_them() -> None:
    with pytest.raises(
        ValueError, match="does not say its layers .* use eval.finetune_layer_decay=null"
    ):
        parameter_groups(nn.Conv2d(3, 4, 3), nn.Linear(4, 2), settings())


def test_adamw_fine_tuning_trains_and_says_its_recipe() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8)
    labelled = LabelledImages(images, np.ones(48, np.float32), np.arange(48) % 4, np.arange(48))
    vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=8)
    before = vit.blocks[0].attn.qkv.weight.detach().clone()
    pipeline = Pipeline({"resized_crop": None, "hflip": None}, 32)
    scored = train_and_score(vit, 4, labelled, labelled, pipeline, pipeline,
                             settings(warmup_epochs=0.5), progress=False)  # fmt: skip
    assert 0.0 <= scored["top1"] <= 1.0
    assert "AdamW lr 0.0005 x 16/256, weight decay 0.05, layer-wise lr decay 0.5, 0.5 warm-up" \
        in scored["description"]  # fmt: skip
    assert "lightly's benchmark" not in scored["description"]
    assert torch.equal(vit.blocks[0].attn.qkv.weight, before)  # a copy was fine-tuned


@pytest.mark.parametrize(
    ("override", "message"),
    [("eval.finetune_optimizer=lamb", "eval.finetune_optimizer must be one of sgd, adamw"),
     ("eval.finetune_layer_decay=1.5", "eval.finetune_layer_decay must be in (0, 1]")],
)  # fmt: skip
def test_a_bad_recipe_value_is_one_clear_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        compose([override])


def test_results_record_the_recipe_only_where_it_leaves_lightlys() -> None:
    lightly = compose([]).eval
    assert finetune_recipe(lightly, changed_only=True) == {}
    mae = compose(["eval.finetune_optimizer=adamw", "eval.finetune_layer_decay=0.65"]).eval
    assert finetune_recipe(mae, changed_only=True) == {"optimizer": "adamw", "layer_decay": 0.65}
    saved_before = OmegaConf.create({"finetune": True})  # a config from before the keys
    assert finetune_recipe(saved_before)["optimizer"] == "sgd"
