"""The evaluations papers publish: few-shot probes, fine-tuning, lightly's SGD probe, the
online probe during pretraining; kNN's k and top-5 where they mean something; `sslbench
eval` adding numbers to results.json; the report's new tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FMNIST, TINY_RUN, needs_fmnist

from sslbench.cli import main
from sslbench.data.subset import few_shot_subset
from sslbench.eval.probes import linear_probe
from sslbench.eval.supervised import light_augmentation


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_few_shot_subsets_keep_every_class_and_are_the_same_for_every_run() -> None:
    labels = np.repeat(np.arange(10), [300, 200, 100, 50, 10, 5, 3, 2, 1, 29])
    labels = np.concatenate([labels, np.full(40, -1)])  # unlabelled images are never picked
    one = few_shot_subset(labels, 0.01, seed=0)
    assert set(labels[one]) == set(range(10))  # at least one image per class
    assert (labels[one] >= 0).all()
    assert np.bincount(labels[one])[0] == 3 and np.bincount(labels[one])[1] == 2
    ten = few_shot_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[ten])[0] == 30 and len(ten) > len(one)
    np.testing.assert_array_equal(one, few_shot_subset(labels, 0.01, seed=0))
    assert not np.array_equal(ten, few_shot_subset(labels, 0.1, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        few_shot_subset(labels, 0.0, seed=0)


def test_top5_only_above_five_classes() -> None:
    rng = torch.Generator().manual_seed(0)
    for classes, has_top5 in ((3, False), (5, False), (6, True)):
        x = torch.randn(60, 8, generator=rng)
        y = torch.arange(60) % classes
        result = linear_probe(x, y, x, y, classes, max_iter=10)
        assert (result.top5 is not None) == has_top5


def test_light_augmentation_keeps_crop_flip_and_normalisation() -> None:
    from omegaconf import OmegaConf

    from sslbench.config import compose

    transform = OmegaConf.to_container(compose(["transform=simclr"]).transform, resolve=True)
    pipeline = light_augmentation(transform, 32)
    assert [op for _, op, _ in pipeline.spec] == ["resized_crop", "hflip", "normalize"]
    assert pipeline.crop is not None and list(pipeline.crop.scale) == [0.08, 1.0]


@pytest.fixture(scope="module")
def evaluated_run(module_folder: Path) -> Path:
    """A tiny run with every evaluation: fine-tuning and the online probe's test top-1."""
    if not FMNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data)")
    run_dir = module_folder / "run"
    args = ["pretrain", "method=simclr", *TINY_RUN, "epochs=2", "eval.finetune=true",
            "eval.finetune_epochs=1", "eval.online_every_n_epochs=1",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(args) == 0
    return run_dir


@needs_fmnist
def test_a_run_with_every_evaluation_fills_every_field(evaluated_run) -> None:
    results = _results(evaluated_run)
    for key in ("linear_top1", "linear_top5", "knn_top1", "linear_top1_1pct",
                "linear_top1_10pct", "finetune_top1", "online_probe_top1",
                "online_probe_train_acc"):  # fmt: skip
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, key
    assert "1%: 10 images" in results["few_shot"]  # 128 train images, 10 classes: 1 each
    assert "fine-tune: backbone and linear head trained 1 epochs" in results["finetune"]
    assert "kNN: k=128, T=0.1" in results["evaluations"]["knn_top1"]["description"]
    caveats = results["caveats"]
    assert "kNN: eval.knn_k=200 clamped to the 128 train images" in caveats
    assert any("most votes come from other classes" in c for c in caveats)
    assert any(c.startswith("few-shot 1% of the labels is 10 images") for c in caveats)
    assert set(results["evaluations"]) == {"linear", "knn_top1", "few_shot", "finetune"}
    assert results["evaluations"]["linear"]["folds"] == 5
    assert results["linear_l2"] == results["evaluations"]["linear"]["l2"]
    rows = [r for r in _metrics(evaluated_run) if r.get("online_probe_top1")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # every epoch, as asked
    assert all(r["online_probe_train_acc"] for r in rows)


@needs_fmnist
def test_the_online_probe_does_not_change_the_run(evaluated_run, tmp_path) -> None:
    """Detached features, its own optimiser, no random draw: the same losses and weights."""
    plain = tmp_path / "plain"
    args = ["pretrain", "method=simclr", *TINY_RUN, "epochs=2", "eval.online_probe=false",
            "eval.few_shot=false", f"run_dir={plain}"]  # fmt: skip
    assert main(args) == 0
    assert "online_probe_train_acc" not in _metrics(plain)[0]
    losses = [[r["train_loss_epoch"] for r in _metrics(d) if r.get("train_loss_epoch")]
              for d in (evaluated_run, plain)]  # fmt: skip
    assert losses[0] == losses[1] and len(losses[0]) == 2
    weights = [torch.load(d / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for d in (evaluated_run, plain)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()  # the probe is not part of the model
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
    assert _results(plain)["linear_top1"] == _results(evaluated_run)["linear_top1"]


@needs_fmnist
def test_eval_adds_the_evaluations_asked_for_and_keeps_the_rest(
    evaluated_run, tmp_path, capsys
) -> None:
    """Each protocol has fields of its own: the SGD probe never replaces the L-BFGS probe's
    linear_top1 (it did: 0.729 -> 0.471, then averaged with L-BFGS runs as two seeds), another
    kNN setting never replaces knn_top1; eval prints every score it computed."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(evaluated_run, run_dir)
    before = _results(run_dir)
    capsys.readouterr()
    assert main(["eval", f"run_dir={run_dir}", "eval.probe=sgd", "eval.sgd_epochs=2",
                 "eval.few_shot=false", "eval.knn_k=5", "eval.finetune=true",
                 "eval.finetune_epochs=1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    after = _results(run_dir)
    assert after["sgd_probe"].startswith("linear (SGD): frozen backbone, linear head trained 2")
    assert 0.0 <= after["sgd_linear_top1"] <= 1.0
    assert 0.0 <= after["knn_top1_k5"] <= 1.0
    for kept in ("linear_top1", "linear_top5", "probe", "knn_top1", "online_probe_top1",
                 "linear_top1_1pct", "pretrain_seconds", "started_at", "status"):  # fmt: skip
        assert after[kept] == before[kept], kept
    evaluations = after["evaluations"]
    assert evaluations["sgd_linear"]["epochs"] == 2 and evaluations["knn_top1_k5"]["k"] == 5
    assert evaluations["knn_top1"] == before["evaluations"]["knn_top1"]  # k=200's, kept
    assert evaluations["few_shot"] == before["evaluations"]["few_shot"]
    for printed in (f"SGD linear probe (eval.probe=sgd) top-1 {after['sgd_linear_top1']:.3f}",
                    f"kNN top-1 at k5: {after['knn_top1_k5']:.3f}",
                    f"fine-tuned top-1 {after['finetune_top1']:.3f}",
                    "note: kNN: k=128 exceeds"):  # fmt: skip
        assert printed in out, (printed, out)


@needs_fmnist
def test_eval_random_init_scores_the_untrained_backbone_apart(finished_run, tmp_path, capsys):
    """The table's lower bound for any run: the same backbone as the run's seed initialised
    it, the same probes; saved as random_init, the run's own scores untouched."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    before = _results(run_dir)
    capsys.readouterr()
    assert main(["eval", f"run_dir={run_dir}", "random_init=true"]) == 0
    after = _results(run_dir)
    bound = after["random_init"]
    assert 0.0 <= bound["linear_top1"] <= 1.0 and 0.0 <= bound["knn_top1"] <= 1.0
    assert bound["linear_top1"] != before["linear_top1"]  # another backbone's score
    for kept in ("linear_top1", "knn_top1", "evaluations"):
        assert after[kept] == before[kept], kept
    out = capsys.readouterr().out
    assert f"untrained, seed as the run's): linear top-1 {bound['linear_top1']:.3f}" in out
    assert main(["eval", f"run_dir={run_dir}", "random_init=maybe"]) == 2
    assert "random_init must be true or false, got 'maybe'" in capsys.readouterr().err


@needs_fmnist
def test_the_report_shows_the_new_evaluations(evaluated_run, tmp_path, capsys) -> None:
    assert main(["report", str(evaluated_run)]) == 0
    out = capsys.readouterr().out
    for title in ("Linear top-1, 1% of the labels", "Linear top-1, 10% of the labels",
                  "Fine-tuned top-1", "Online-probe top-1"):  # fmt: skip
        assert f"### {title}" in out
    assert main(["report", str(evaluated_run), "--format", "csv"]) == 0
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert float(row["finetune_top1_mean"]) == pytest.approx(
        _results(evaluated_run)["finetune_top1"], abs=1e-3
    )
    out_file = tmp_path / "report.html"
    assert main(["report", str(evaluated_run), "--format", "html", "--out", str(out_file)]) == 0
    assert any("online_probe" in p.name for p in tmp_path.glob("*.png"))


def test_the_probes_l2_is_chosen_on_every_train_image_and_ties_go_to_the_stronger() -> None:
    """k-fold: each train image is held out once (the accuracies are counts over all of
    them); features every L2 separates equally choose the strongest L2, not the weakest."""
    from sslbench.eval.probes import L2_GRID

    rng = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.nn.functional.one_hot(y, 4).float() * 10 + 0.01 * torch.randn(200, 4, generator=rng)
    result = linear_probe(x, y, x, y, 4, max_iter=30)
    assert result.folds == 5
    assert result.selection_accuracy == {f"{l2:g}": 1.0 for l2 in L2_GRID}
    assert result.l2 == max(L2_GRID)
    assert "5-fold cross-validation" in result.description


@pytest.mark.slow
def test_the_probes_l2_does_not_flip_on_features_that_differ_a_little() -> None:
    """1,024 images, the same features up to a small perturbation (a resumed run, another
    seed): one 20% split chose 1e-2 for some copies and 1e-3 for others, and the accuracy
    moved with it; the k-fold choice is the same for every copy."""
    torch.manual_seed(0)
    n, dim, classes = 1024, 256, 10
    labels = torch.arange(n) % classes
    base = torch.randn(classes, dim)[labels] * 0.1 + torch.randn(n, dim)
    chosen = set()
    for copy in range(4):
        noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(100 + copy))
        x = base + 0.05 * noise
        chosen.add(linear_probe(x, labels, x[:10], labels[:10], classes, max_iter=50).l2)
    assert len(chosen) == 1, chosen


def test_eval_on_a_run_from_before_evaluations_were_recorded(tmp_path) -> None:
    """A results.json of schema 2 (no evaluations) takes the new protocols' settings; one
    that has them keeps those not evaluated again."""
    from sslbench.run.evaluate import update_results
    from sslbench.run.results import write_results

    write_results(tmp_path, {"status": "completed", "linear_top1": 0.7})
    knn = {"knn_top1_k5": {"k": 5, "temperature": 0.1}}
    after = update_results(tmp_path, {"knn_top1_k5": 0.6, "evaluations": knn})
    assert after["evaluations"] == knn and after["linear_top1"] == 0.7
    sgd = {"sgd_linear": {"epochs": 2, "lr": 0.1, "batch_size": 256}}
    after = update_results(tmp_path, {"sgd_linear_top1": 0.5, "evaluations": sgd})
    assert after["evaluations"] == {**knn, **sgd}
    assert _results(tmp_path)["evaluations"] == {**knn, **sgd}
