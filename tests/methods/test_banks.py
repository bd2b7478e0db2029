"""Memory banks: a checkpoint holds them (lightly keeps them out of the state_dict), and a
bank larger than the training set is refused with a size that fits."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN, needs_fmnist, one_line_error, small_method
from omegaconf import OmegaConf

from sslbench.cli import main
from sslbench.errors import ConfigError
from sslbench.methods.banks import (
    bank_state,
    check_bank_sizes,
    fitting_bank_size,
    load_bank_state,
)

QUEUE = ("method.queue_length=64", "method.queue_start_epoch=0")


def test_a_checkpoint_holds_the_banks_that_the_state_dict_leaves_out() -> None:
    method, _ = small_method("swav", *QUEUE)
    queue = method.queues[0]
    assert "queues.0.bank" not in method.state_dict()  # lightly: a non-persistent buffer
    queue(torch.nn.functional.normalize(torch.randn(16, 32), dim=1), update=True)
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    saved = checkpoint["sslbench_extra_state"]
    assert set(saved) == {
        "queues.0.bank",
        "queues.0.bank_ptr",
        "queues.1.bank",
        "queues.1.bank_ptr",
    }
    assert int(saved["queues.0.bank_ptr"]) == 16

    fresh, _ = small_method("swav", *QUEUE)
    assert not torch.equal(fresh.queues[0].bank, queue.bank)
    fresh.on_load_checkpoint(checkpoint)
    assert torch.equal(fresh.queues[0].bank, queue.bank)
    assert int(fresh.queues[0].bank_ptr) == 16
    # the copy is the checkpoint's, not a view of the live bank
    queue(torch.randn(16, 32), update=True)
    assert int(saved["queues.0.bank_ptr"]) == 16


def test_a_bank_of_another_size_is_not_loaded() -> None:
    method, _ = small_method("swav", *QUEUE)
    other, _ = small_method("swav", "method.queue_length=32")
    with pytest.raises(
        ValueError, match=r"queues.0.bank has shape \(32, 32\), the method's \(64, 32\)"
    ):
        load_bank_state(method, bank_state(other))


@pytest.mark.parametrize(
    ("images", "batch", "fit"), [(9469, 256, 9216), (128, 64, 128), (100, 256, 100), (130, 64, 128)]
)
def test_the_bank_that_fits_is_a_multiple_of_the_batch(images: int, batch: int, fit: int) -> None:
    assert fitting_bank_size(images, batch) == fit


def test_a_bank_larger_than_the_training_set_is_refused() -> None:
    cfg = OmegaConf.create({"batch_size": 256, "method": {"memory_bank_size": 4096}})
    check_bank_sizes(cfg, ("memory_bank_size",), 9469)  # lightly's Imagenette bank fits
    with pytest.raises(ConfigError) as err:
        check_bank_sizes(cfg, ("memory_bank_size",), 1000)
    assert str(err.value) == (
        "method.memory_bank_size=4096 is larger than the training set (1000 images): a bank "
        "of past embeddings must not repeat images; use method.memory_bank_size=768 or less"
    )


@needs_fmnist
def test_the_run_refuses_a_bank_larger_than_its_data_in_one_line(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["pretrain", *TINY_RUN, "method=swav", "method.queue_length=4096", f"run_dir={run_dir}"]
    assert main(args) != 0
    err = one_line_error(capsys)
    assert "method.queue_length=4096 is larger than the training set (128 images)" in err
    assert "use method.queue_length=128 or less" in err
    assert not (run_dir / "last.ckpt").exists()
