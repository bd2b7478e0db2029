"""MAE and SimMIM, the masked-image methods (ViT only): their masks are per sample and
reproducible from the step's generator, their losses read the masked patches only, their
gradients reach the ViT's patch embedding, a ResNet is refused in one line, and a tiny real
run of each completes and is evaluated."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_RUN, correlated_views, needs_fmnist, one_line_error, small_method
from lightly.models import utils

from sslbench.cli import main
from sslbench.errors import ConfigError
from sslbench.methods.mae import MAE
from sslbench.methods.simmim import SimMIM

METHODS = ("mae", "simmim")
#: 32-px views, 8-px patches: a grid of 4 x 4 = 16 patches.
NUM_PATCHES = 16


def _at_step(method, step: int, epoch: int = 0) -> None:
    """Make ``method`` read (rank 0, epoch, step) as a Trainer would give them."""
    method._trainer = SimpleNamespace(global_step=step, current_epoch=epoch, global_rank=0)


def _mask(method, batch_size: int = 8) -> torch.Tensor:
    """The step's mask as a bool (N, T) tensor, True where masked."""
    if isinstance(method, MAE):
        keep, masked = method.draw_mask(batch_size)
        mask = torch.zeros(batch_size, NUM_PATCHES, dtype=torch.bool)
        mask.scatter_(1, masked, True)
        # every patch is either kept or masked, once
        assert torch.equal(torch.cat([keep, masked], 1).sort(1).values,
                           torch.arange(NUM_PATCHES).expand(batch_size, -1))  # fmt: skip
        return mask
    return method.draw_mask(batch_size)


@pytest.mark.parametrize(
    ("name", "overrides", "masked"),
    [
        ("mae", (), 12),  # 75% of 16 patches
        ("simmim", (), 10),  # 60% of 16 one-patch blocks: 16 - int(16 * 0.4)
        ("simmim", ("method.mask_patch_size=16",), 12),  # 3 of 4 blocks of 2 x 2 patches
    ],
)
def test_masks_are_per_sample_and_reproducible(name: str, overrides, masked: int) -> None:
    method, _ = small_method(name, *overrides)
    _at_step(method, 3)
    mask = _mask(method)
    assert (mask.sum(1) == masked).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # each image its own
    again, _ = small_method(name, *overrides)  # another instance, the same seed and step
    _at_step(again, 3)
    assert torch.equal(_mask(again), mask)
    _at_step(again, 4)
    assert not torch.equal(_mask(again), mask)
    _at_step(again, 3, epoch=1)
    assert not torch.equal(_mask(again), mask)
    if name == "simmim":  # whole blocks: every patch of a block masked alike
        block = method.block
        grid = mask.view(-1, 4 // block, block, 4 // block, block)
        assert (grid.all(dim=(2, 4)) == grid.any(dim=(2, 4))).all()


@pytest.mark.parametrize("name", METHODS)
def test_views_are_cropped_and_flipped_only(name: str) -> None:
    # the papers' augmentation, out of the run's SimCLR pipeline (jitter, grey, blur dropped)
    method, cfg = small_method(name)
    assert cfg.transform.name == "simclr"
    ops = [[op for _, op, _ in p.spec] for p in method.view_pipelines]
    assert ops == [["resized_crop", "hflip", "normalize"]]


def test_mask_block_must_tile_the_view_in_patches() -> None:
    with pytest.raises(ConfigError, match=r"valid: null \(= 8\), 8, 16$"):
        small_method("simmim", "method.mask_patch_size=12")
    with pytest.raises(ConfigError, match="mask_patch_size=32 px"):  # the whole view
        small_method("simmim", "method.mask_patch_size=32")


@pytest.mark.parametrize("name", METHODS)
def test_loss_reads_the_masked_patches_of_the_target_only(name: str) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name)
    images = correlated_views(4).global_views[0]
    mask = _mask(method, 4)
    if isinstance(method, MAE):
        masked = mask.nonzero()[:, 1].view(4, -1)  # (N, 12) indices, ascending
        predicted = torch.randn(4, masked.shape[1], 8 * 8 * 3)

        def loss(x: torch.Tensor) -> float:
            return float(method.float32_loss(method._loss, predicted, x, masked))
    else:
        predicted = torch.randn(4, NUM_PATCHES, 8 * 8 * 3)

        def loss(x: torch.Tensor) -> float:
            return float(method.float32_loss(method._loss, predicted, x, mask))

    before = loss(images)
    kept_patch, masked_patch = (~mask[0]).nonzero()[0, 0], mask[0].nonzero()[0, 0]
    for patch, changes in ((kept_patch, False), (masked_patch, True)):
        patches = utils.patchify(images, 8)
        patches[0, patch] += torch.randn(8 * 8 * 3)  # another pattern, not just an offset
        changed = utils.unpatchify(patches, 8)
        assert (loss(changed) != pytest.approx(before, rel=1e-6)) == changes, patch


def test_mae_targets_are_the_views_patches_normalised_per_patch() -> None:
    method, _ = small_method("mae")
    images = correlated_views(4).global_views[0]
    _, masked = method.draw_mask(4)
    target = method.target_patches(images, masked)
    raw = torch.gather(utils.patchify(images, 8), 1, masked[..., None].expand(-1, -1, 192))
    assert method.norm_pix_loss  # the paper's default
    torch.testing.assert_close(target.mean(-1), torch.zeros(4, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(target * raw.std(-1, keepdim=True) + raw.mean(-1, keepdim=True),
                               raw, atol=1e-4, rtol=1e-4)  # fmt: skip
    method.norm_pix_loss = False
    assert torch.equal(method.target_patches(images, masked), raw)


@pytest.mark.parametrize("name", METHODS)
def test_gradient_reaches_the_patch_embedding(name: str) -> None:
    torch.manual_seed(0)
    method, _ = small_method(name)
    method.train()
    loss = method.training_loss(correlated_views(8))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert float(method.backbone.patch_embed.proj.weight.grad.abs().sum()) > 0
    # the learnt mask token of each: the decoder's (MAE), the encoder's (SimMIM)
    token = method.decoder.mask_token if isinstance(method, MAE) else method.encoder.mask_token
    assert float(token.grad.abs().sum()) > 0
    assert isinstance(method, (MAE, SimMIM)) and method.num_global_views == 1


def test_mae_encoder_sees_the_kept_patches_only() -> None:
    method, _ = small_method("mae")
    images = correlated_views(4).global_views[0]
    keep, masked = method.draw_mask(4)
    predicted, encoded = method.reconstruct(images, keep, masked)
    assert encoded.shape == (4, 1 + 4, 192)  # class token + 25% of 16 patches
    assert predicted.shape == (4, 12, 8 * 8 * 3)
    # a masked patch's pixels do not reach the encoder
    patches = utils.patchify(images, 8)
    patches[torch.arange(4), masked[:, 0]] = 100.0
    _, again = method.reconstruct(utils.unpatchify(patches, 8), keep, masked)
    torch.testing.assert_close(again, encoded)


@needs_fmnist
def test_mae_on_a_resnet_is_one_line_and_leaves_no_run_folder(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", "method=mae", *TINY_RUN, f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    assert "valid kinds for mae: vit" in err and "backbone=resnet10t" in err
    assert not run_dir.exists()
