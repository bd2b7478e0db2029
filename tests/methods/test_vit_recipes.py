"""ViT recipes and the optimiser parts they need: a method YAML's ``vit:`` section applied
when the backbone is a ViT (the command line still wins), the weight-decay schedule, both
kinds of gradient clipping, DINO's frozen last layer, multi-crop on a ViT, the pipeline ops
a method keeps, and a method refused on a backbone kind it is not made for."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_RUN, correlated_views, one_line_error, small_method

from sslbench.cli import main
from sslbench.config import compose
from sslbench.config.compose import is_vit
from sslbench.errors import ConfigError

VIT = ("backbone=vit_tiny_patch16_224", "backbone.patch_size=8")


def test_dino_on_a_vit_takes_the_papers_recipe_and_the_command_line_still_wins() -> None:
    resnet = compose(["method=dino"]).method
    assert "vit" not in resnet and resnet.optimizer.name == "sgd" and resnet.batch_norm
    vit = compose(["method=dino", "backbone=vit_small_patch16_224", "method.teacher_temp=0.05"])
    assert "vit" not in vit.method
    assert vit.method.optimizer.name == "adamw" and vit.method.optimizer.weight_decay_end == 0.4
    assert vit.method.optimizer.grad_clip_mode == "per_tensor" and not vit.method.batch_norm
    assert vit.method.teacher_temp == 0.05  # the command line's, not the recipe's 0.07


@pytest.mark.parametrize(
    ("name", "vit"),
    [
        ("vit_small_patch16_224", True),
        ("deit_tiny_patch16_224", True),
        ("resnet18", False),
        ("vit_base_patch16_dinov3", False),
        ("convnext_tiny", False),
    ],  # fmt: skip
)
def test_a_vit_is_named_by_timms_registry(name: str, vit: bool) -> None:
    # dinov3 is timm's Eva, not a VisionTransformer: lightly's masked ViT cannot wrap it
    assert is_vit(name) == vit


def test_optimiser_keys_the_yaml_leaves_out_can_be_set_and_are_checked() -> None:
    cfg = compose(["method=simclr", "method.optimizer.grad_clip=1.0"])
    assert cfg.method.optimizer.grad_clip == 1.0
    with pytest.raises(ConfigError, match="grad_clip_mode must be one of total, per_tensor"):
        compose(["method=simclr", "method.optimizer.grad_clip_mode=value"])
    with pytest.raises(ConfigError, match="valid keys under method.optimizer: .*grad_clip"):
        compose(["method=simclr", "method.optimizer.gradclip=1.0"])
    with pytest.raises(ConfigError, match=r"betas must be two numbers in \[0, 1\)"):
        compose(["method=simclr", "method.optimizer.betas=[0.9]"])


def test_adamw_takes_the_recipes_betas() -> None:
    from conftest import configured_optimizers

    method, _ = small_method("simclr", "method.optimizer.name=adamw",
                             "method.optimizer.betas=[0.9,0.95]")  # fmt: skip
    optimizer = configured_optimizers(method, steps=10, epochs=1)["optimizer"]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def _method_with_grads(*overrides: str):
    method, _ = small_method("simclr", *overrides)
    for i, p in enumerate(method.parameters()):
        p.grad = torch.full_like(p, float(i + 1))
    return method


def test_per_tensor_clipping_bounds_each_gradient_and_total_clipping_their_whole() -> None:
    method = _method_with_grads("method.optimizer.grad_clip=0.5",
                                "method.optimizer.grad_clip_mode=per_tensor")  # fmt: skip
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    method.configure_gradient_clipping(optimizer)
    norms = torch.stack([p.grad.norm() for p in method.parameters()])
    assert torch.allclose(norms, torch.full_like(norms, 0.5), rtol=2e-3)

    method = _method_with_grads("method.optimizer.grad_clip=0.5")
    before = [p.grad.clone() for p in method.parameters()]
    method.configure_gradient_clipping(torch.optim.SGD(method.parameters(), lr=0.1))
    after = [p.grad for p in method.parameters()]
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in after]))
    assert abs(float(total) - 0.5) < 1e-3
    pairs = zip(after, before, strict=True)
    ratios = {round(float(a.flatten()[0] / b.flatten()[0]), 6) for a, b in pairs}
    assert len(ratios) == 1  # one scale for all: directions kept

    method = _method_with_grads()  # grad_clip null: untouched
    before = [p.grad.clone() for p in method.parameters()]
    method.configure_gradient_clipping(torch.optim.SGD(method.parameters(), lr=0.1))
    after = [p.grad for p in method.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


class _Decays(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append([g["weight_decay"] for g in trainer.optimizers[0].param_groups])


def test_the_weight_decay_follows_a_cosine_to_weight_decay_end_and_spares_excluded_groups() -> None:
    method, _ = small_method(
        "simclr", "method.optimizer.name=adamw", "method.optimizer.weight_decay=0.1",
        "method.optimizer.weight_decay_end=0.5", "method.optimizer.exclude_bias_and_norm=true",
    )  # fmt: skip
    images = torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8)
    data = torch.utils.data.TensorDataset(images, torch.ones(40), torch.zeros(40).long())
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    decays = _Decays()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[decays],
    )  # fmt: skip
    trainer.fit(method, loader)
    decayed = [groups[0] for groups in decays.seen]
    assert decayed[0] == pytest.approx(0.1) and decayed[-1] == pytest.approx(0.5)
    assert decayed[2] == pytest.approx(0.3)  # halfway through 5 steps: the cosine's middle
    assert all(groups[1] == 0.0 for groups in decays.seen)  # biases and norms: never decayed


def test_dino_on_a_vit_trains_multi_crop_and_keeps_its_last_layer_the_first_epoch() -> None:
    method, cfg = small_method("dino", *VIT)
    assert cfg.method.optimizer.name == "adamw" and method.num_local_views == 2
    views = correlated_views(8)
    # the local side 0.43 x 32 = 14 px: padded to 2 x 2 patches of 8 px
    assert method.local_pipeline.size == 14
    views.local_views = [torch.randn(8, 3, 14, 14) for _ in range(2)]
    loss = method.training_loss(views)
    loss.backward()
    method.on_after_backward()  # epoch 0 < freeze_last_layer=1: no step for the last layer
    assert all(p.grad is None for p in method.projection_head.last_layer.parameters())
    assert method.backbone.patch_embed.proj.weight.grad is not None


def test_a_method_keeps_only_its_pipeline_ops(monkeypatch) -> None:
    from sslbench.methods.simclr import SimCLR

    monkeypatch.setattr(SimCLR, "pipeline_ops", ("resized_crop", "hflip", "normalize"))
    method, _ = small_method("simclr")
    ops = [[op for _, op, _ in p.spec] for p in method.view_pipelines]
    assert ops == [["resized_crop", "hflip", "normalize"]]


def test_a_method_on_a_backbone_kind_it_is_not_made_for_exits_2_before_the_run_folder(
    tmp_path, capsys
) -> None:
    run_dir = tmp_path / "run"
    args = ["pretrain", "method=vicregl", *TINY_RUN, *VIT, f"run_dir={run_dir}"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "method=vicregl trains a CNN (e.g. backbone=resnet18); backbone=" in err
    assert "is a VIT; valid kinds for vicregl: cnn" in err
    assert not run_dir.exists()


def test_the_configured_optimiser_warms_up_then_follows_the_recipe() -> None:
    from conftest import configured_optimizers

    method, cfg = small_method("dino", *VIT, "epochs=20")
    setup = configured_optimizers(method, steps=200, epochs=20)
    scheduler = setup["lr_scheduler"]["scheduler"]
    # 10 warm-up epochs of 10 steps: the lr rises linearly to its peak at step 100
    assert scheduler.lr_lambdas[0](49) == pytest.approx(0.5) and scheduler.lr_lambdas[0](99) == 1
    assert isinstance(setup["optimizer"], torch.optim.AdamW)


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_the_run_folder() -> None:
    from sslbench.config.identity import config_hash

    views = correlated_views(4)
    grads = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        method, cfg = small_method("mae", f"backbone.grad_checkpointing={flag}")
        assert method.backbone.grad_checkpointing == (flag == "true")
        assert method.encoder.grad_checkpointing == (flag == "true")  # lightly's own flag
        method.training_loss(views).backward()
        grads.append(method.backbone.blocks[0].attn.qkv.weight.grad)
        hashes = config_hash(cfg)
    torch.testing.assert_close(grads[0], grads[1])
    assert hashes == config_hash(small_method("mae")[1])


def test_a_methods_own_check_of_its_keys_exits_2_before_the_run_folder(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["pretrain", "method=msn", "method.prior=zipf", *TINY_RUN, *VIT, f"run_dir={run_dir}"]
    assert main(args) == 2
    assert "unknown method.prior 'zipf'; valid: uniform, power_law" in one_line_error(capsys)
    assert not run_dir.exists()
