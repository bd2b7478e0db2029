"""`sslbench bench` and the pieces it stands on: the CPU thread settings, lightly's
reference data path at a run's settings, and training steps fed ready-made views."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_RUN, build_method, method_names, needs_fmnist, small_method
from omegaconf import OmegaConf

from sslbench.cli import bench_overrides, main
from sslbench.config import compose
from sslbench.methods import Views, method_class
from sslbench.tools.bench import run_bench
from sslbench.tools.bench_result import BenchResult, BenchRow, BenchSettings
from sslbench.tools.bench_rows import StepClock
from sslbench.tools.lightly_views import (
    PIPELINE_OF_TRANSFORM,
    collate_views,
    lightly_transform,
    two_view_transform,
)


# -- ready-made views --------------------------------------------------------------------------
def test_a_step_on_ready_views_equals_the_step_that_makes_them(fmnist_batch) -> None:
    images, aspect, labels = fmnist_batch
    model, _ = build_method()
    views = model.make_views(images, aspect)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from_images = model.training_step((images, aspect, labels), 0)
    model.load_state_dict(state)
    from_views = model.training_step(views, 0)
    torch.testing.assert_close(from_views, from_images)


# -- lightly's data path -----------------------------------------------------------------------
def _pil_items(n: int, side: int = 28):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, side, side, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(p.numpy(), "RGB") for p in pixels]


def _methods_with_a_lightly_transform() -> list:
    """Every registered method that names a lightly transform; the first of each transform
    in the fast suite, the others marked slow (they check the same code path)."""
    rows, seen = [], set()
    for name in method_names():
        kind = method_class(name).lightly_transform
        if kind is not None:
            rows.append(pytest.param(name, marks=[pytest.mark.slow] if kind in seen else []))
            seen.add(kind)
    return rows


@pytest.mark.parametrize("method", _methods_with_a_lightly_transform())
def test_lightly_views_match_the_methods_layout(method) -> None:
    """lightly's transform for the method (bench's lightly row) gives the views the method
    trains on: as many global and local views, the coordinate maps where it needs them."""
    kind = method_class(method).lightly_transform
    pipeline = PIPELINE_OF_TRANSFORM.get(kind)
    model, cfg = small_method(method, *([f"transform={pipeline}"] if pipeline else []))
    transform, name = lightly_transform(cfg, model.backbone)
    assert name == (type(two_view_transform(cfg)).__name__ if kind == "pipeline" else kind)
    items = [(transform(image), 0) for image in _pil_items(4)]
    coords = model.needs_coordinates
    views = collate_views(items, model.num_global_views, model.num_local_views, coords)
    assert isinstance(views, Views)
    assert len(views.global_views) == model.num_global_views
    assert len(views.local_views) == model.num_local_views
    assert views.global_views[0].shape == (4, 3, 32, 32)
    assert views.global_views[0].dtype == torch.float32
    assert (views.global_coords is not None) == coords
    if coords:
        assert views.global_coords[0].shape == (4, 2, 32, 32)
    loss = model.training_step(views, 0)  # the method trains on them as on its own views
    assert torch.isfinite(loss)


def test_lightly_transform_takes_the_runs_parameters() -> None:
    jitter, flip = "transform.ops.color_jitter.p=0.3", "transform.ops.hflip.p=0.1"
    cfg = compose(["image_size=32", jitter, flip])
    ops = {
        type(op).__name__: op for op in two_view_transform(cfg).transforms[0].transform.transforms
    }
    assert ops["RandomHorizontalFlip"].p == 0.1 and ops["RandomApply"].p == 0.3
    assert ops["GaussianBlur"].prob == 0.0  # sslbench skips the blur at 32 px, so lightly must
    byol = compose(["image_size=64", "transform=byol"])
    assert type(two_view_transform(byol)).__name__ == "BYOLTransform"


def test_a_pipeline_lightly_cannot_make_is_one_clear_error() -> None:
    cfg = compose(["transform=baseline"])
    with pytest.raises(ValueError, match="pipeline 'baseline'; valid: simclr, byol"):
        two_view_transform(cfg)
    cfg = compose(["transform.ops.resized_crop.ratio=[0.5,2.0]"])
    with pytest.raises(ValueError, match=r"crop ratio \[0.5, 2.0\]"):
        two_view_transform(cfg)


# -- the command -------------------------------------------------------------------------------
BENCH = [o for o in TINY_RUN if not o.startswith(("epochs", "eval."))]


@needs_fmnist
def test_bench_prints_three_rows_and_the_ratio_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a busy machine
    out = tmp_path / "bench.jsonl"
    code = main(["bench", *BENCH, "dataset.max_train=256", "steps=1", "warmup=1", "workers=1",
                 f"out={out}"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    match = re.fullmatch(r"ratio_vs_lightly=(\d+\.\d\d) share_of_ceiling=(\d+\.\d\d)", last)
    assert match, last
    for row in ("sslbench", "lightly", "ceiling"):
        assert re.search(rf"^{row}\s+\d", printed, re.MULTILINE), row
    assert "SimCLRTransform per image, 1 DataLoader workers" in printed
    assert "the median of 3 timed blocks of 1 step;" in printed  # repeats' default
    assert re.search(r"^busy machine: load average \(1 minute\) 9\.00 before the first row",
                     printed, re.MULTILINE)  # fmt: skip
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    rows = {row["row"]: row for row in result["rows"]}
    assert set(rows) == {"sslbench", "lightly", "ceiling"}
    for row in rows.values():
        assert row["images_per_second"] > 0 and row["peak_host_bytes"] > 50e6
        assert len(row["repeat_seconds"]) == 3 and row["load_average"] == 9.0
        assert row["step_seconds_min"] <= row["step_seconds"]
        assert row["peak_device_bytes"] is None  # no GPU here
    assert rows["lightly"]["peak_worker_host_bytes"] > 10e6  # its worker was measured
    assert rows["sslbench"]["peak_worker_host_bytes"] == 0  # no workers
    ratio = rows["sslbench"]["images_per_second"] / rows["lightly"]["images_per_second"]
    assert result["ratio_vs_lightly"] == pytest.approx(ratio)
    assert float(match.group(1)) == pytest.approx(ratio, abs=0.006)
    settings = result["settings"]
    assert (settings["batch_size"], settings["image_size"], settings["steps"]) == (64, 32, 1)
    assert {"torch", "lightly", "pytorch_lightning"} <= set(result["machine"]["versions"])


@needs_fmnist
def test_bench_rows_can_be_chosen(capsys) -> None:
    assert main(["bench", *BENCH, "steps=1", "warmup=1", "repeats=2", "rows=ceiling"]) == 0
    printed = capsys.readouterr().out
    assert "the median of 2 timed blocks of 1 step;" in printed
    assert "ratio_vs_lightly=n/a share_of_ceiling=n/a" in printed
    assert re.search(r"^ceiling\s+\d", printed, re.MULTILINE)
    assert not re.search(r"^sslbench\s+\d", printed, re.MULTILINE)


@needs_fmnist
def test_each_row_times_repeats_blocks_after_one_warmup() -> None:
    cfg = compose(bench_overrides([*BENCH, "dataset.max_train=256"]))
    settings = BenchSettings(steps=1, warmup=1, repeats=2, rows=["ceiling"])
    (row,) = run_bench(cfg, settings).rows
    assert len(row.repeat_seconds) == 2 and row.steps == 1
    with pytest.raises(ValueError, match="repeats=0"):
        BenchSettings(repeats=0)


# -- repeated timing, and what is said beside the ratios ---------------------------------------
def test_the_clock_times_each_block_after_the_warmup() -> None:
    ticks = iter([10.0, 11.0, 13.0, 14.5])  # the clock at each block's start, then the end
    clock = StepClock(warmup=2, steps=3, repeats=3, timer=lambda: next(ticks))
    module = SimpleNamespace(device=torch.device("cpu"))
    for step in range(1, 2 + 3 * 3 + 1):
        assert clock.seconds is None
        trainer = SimpleNamespace(global_step=step)
        clock.on_train_batch_end(trainer, module, None, None, step - 1)
        clock.on_train_batch_end(trainer, module, None, None, step - 1)  # no step: no mark
    assert clock.seconds == [1.0, 2.0, 1.5]


def _result(blocks: dict[str, list[float]], load: float = 0.2, row_load: float = 0.2,
            threads: int = 2) -> BenchResult:  # fmt: skip
    """A benchmark whose rows took ``blocks`` seconds per block of 10 steps of 100 images, on
    a 2-CPU machine of that 1-minute load average before the rows and after each."""
    settings = {"method": "simclr", "transform": "simclr", "backbone": "resnet10t",
                "image_size": 32, "batch_size": 100, "precision": "32-true",
                "dataset": "fashion-mnist", "steps": 10, "warmup": 1, "repeats": 3}  # fmt: skip
    machine = {"cpu": "test", "cores": 2, "torch_threads": 2, "device": "cpu",
               "versions": {"torch": "x"}, "cpus": 2, "load_average": load}  # fmt: skip
    rows = [
        BenchRow(
            row=name,
            repeat_seconds=seconds,
            steps=10,
            batch_size=100,
            peak_host_bytes=2**30,
            peak_worker_host_bytes=0,
            peak_device_bytes=None,
            held_images_bytes=None,
            host_syncs=None,
            detail="d",
            threads=threads + 2 * (name == "lightly"),
            load_average=row_load,
        )  # fmt: skip
        for name, seconds in blocks.items()
    ]
    return BenchResult(settings, machine, rows)


def test_min_and_median_are_printed_and_the_last_line_stays_the_ratios() -> None:
    result = _result({"sslbench": [10.0, 12.0, 11.0], "lightly": [13.0, 13.0, 13.0],
                      "ceiling": [10.5, 13.0, 10.4]})  # fmt: skip
    printed = result.render()
    lines = printed.splitlines()
    assert lines[-1] == "ratio_vs_lightly=1.18 share_of_ceiling=0.95"  # median blocks
    assert re.search(r"^row +images/s +ms/step +min ms/step +spread ", printed, re.MULTILINE)
    # images/s and ms/step of the median block, ms/step of the fastest, (12 - 10) / 11
    assert re.search(r"^sslbench +91 +1,100 +1,000 +18% ", printed, re.MULTILINE)
    assert "from the fastest blocks: ratio_vs_lightly=1.30 share_of_ceiling=1.04" in lines
    (noise,) = [x for x in lines if "is noise" in x]  # the fastest blocks' share is above 1
    assert noise.startswith("share_of_ceiling 1.04 is noise:") and "no data path" in noise
    assert "sslbench 18%, ceiling 25%" in noise
    assert not any(x.startswith("busy machine") for x in lines)  # an idle machine
    row = result.as_json()["rows"][0]
    assert (row["images_per_second"], row["images_per_second_best"]) == pytest.approx(
        (1000 / 11, 100.0)
    )
    below = _result({"sslbench": [11.0, 11.0, 11.0], "ceiling": [9.0, 9.0, 9.0]}).render()
    assert "is noise" not in below and below.endswith("share_of_ceiling=0.82")


@pytest.mark.parametrize(
    ("load", "row_load", "said"),
    [
        (3.5, 0.2, "3.50 before the first row"),  # above the 2 CPUs before the bench
        (0.2, 4.5, "4.50 after the lightly row (its own threads: 4)"),  # above its 4 threads
        (0.2, 3.9, None),  # the lightly row's own 2 threads + 2 workers, on 2 CPUs
        (2.0, 2.0, None),
    ],
)
def test_a_busy_machine_is_said_beside_the_ratios(load, row_load, said) -> None:
    blocks = {"lightly": [13.0, 13.0, 13.0]}
    lines = _result(blocks, load=load, row_load=row_load).render().splitlines()
    busy = [x for x in lines if x.startswith("busy machine: load average (1 minute) ")]
    if said is None:
        assert not busy
    else:
        assert len(busy) == 1 and said in busy[0] and "above the machine's 2 CPUs" in busy[0]
    assert lines[-1].startswith("ratio_vs_lightly=")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rows=sslbench,fast"], "unknown bench row 'fast'; valid: sslbench, lightly, ceiling"),
        (["steps=0"], "steps must be a positive integer, got '0'"),
        (["repeats=0"], "repeats must be a positive integer, got '0'"),
        (["workers=two"], "workers must be auto or a number >= 0, got 'two'"),
        (["transform=baseline", "rows=lightly"], "pipeline 'baseline'; valid: simclr, byol"),
    ],
)
def test_bench_bad_input_is_one_line(args, message, capsys) -> None:
    assert main(["bench", "backbone=resnet10t", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_defaults_step_aside_for_the_users_and_an_experiment() -> None:
    from sslbench.cli import bench_overrides

    assert compose(bench_overrides([])).batch_size == 128
    assert compose(bench_overrides([])).image_size == 32
    assert compose(bench_overrides(["batch_size=64"])).batch_size == 64
    demo = compose(bench_overrides(["experiment=demo"]))
    assert OmegaConf.select(demo, "dataset.max_train") == 10000
