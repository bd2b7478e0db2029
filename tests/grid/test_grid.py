"""Grids of runs (`sslbench pretrain -m`): expansion, the study's experiments, child processes,
skipping completed runs, recording failures, and the SLURM launcher's configuration."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN, needs_fmnist

from sslbench.cli import main
from sslbench.errors import ConfigError
from sslbench.grid.expand import expand
from sslbench.grid.launch import run_grid
from sslbench.grid.local import child_env
from sslbench.run.results import read_results

#: The study's rows: 7 methods, VICRegL at 4 values of alpha.
STUDY_ROWS = 10


def _labels(grid) -> list[str]:
    return [" ".join(run.label) for run in grid.runs]


@pytest.mark.parametrize(
    ("experiment", "pipelines", "dataset"),
    [
        ("study_imagenette", 5, "imagenette2"),
        # the same YAML shape on other data: 175 composes, 9 s, in the slow suite
        pytest.param("study_imagenette2_160", 5, "imagenette2-160", marks=pytest.mark.slow),
        pytest.param("study_imagewoof", 5, "imagewoof2", marks=pytest.mark.slow),
        ("study_nabirds", 2, "nabirds"),
    ],
)
def test_study_experiments_list_the_studys_runs(experiment, pipelines, dataset) -> None:
    grid = expand([f"experiment={experiment}"])
    assert len(grid.runs) == STUDY_ROWS * pipelines
    assert len({run.run_dir for run in grid.runs}) == len(grid.runs)  # one folder each
    for run in grid.runs:
        cfg = run.cfg
        assert (cfg.dataset.name, cfg.backbone.name) == (dataset, "resnet18")
        assert (cfg.image_size, cfg.epochs, cfg.batch_size) == (224, 200, 256)
        assert not cfg.grid.runs and not cfg.grid.axes  # each run is one run
    alphas = sorted(r.cfg.method.alpha for r in grid.runs if r.cfg.method.name == "vicregl")
    assert sorted(set(alphas)) == [0.25, 0.5, 0.75, 0.95]
    methods = {run.cfg.method.name for run in grid.runs}
    assert methods == {"simclr", "simsiam", "swav", "byol", "barlowtwins", "vicreg", "vicregl"}
    if experiment == "study_nabirds":
        assert {run.cfg.transform.name for run in grid.runs} == {"lorot", "dcl"}


def test_lightly_imagenette_runs_each_of_lightlys_resnet_models_as_lightly_did() -> None:
    """One run per ResNet model of lightly's published Imagenette table that sslbench has,
    plus the supervised bound, each at lightly's protocol and with a pipeline equal to the
    lightly transform that model used (a lightly transform can be built from it)."""
    import csv
    from importlib import resources

    from sslbench.methods import METHODS
    from sslbench.nn.backbones import create_backbone
    from sslbench.tools.lightly_views import lightly_transform

    table = resources.files("sslbench.report").joinpath("lightly_imagenette.csv").read_text()
    resnet_models = {row["method"] for row in csv.DictReader(table.splitlines())
                     if row["backbone"] == "resnet18"}  # fmt: skip
    grid = expand(["experiment=lightly_imagenette"])
    methods = [run.cfg.method.name for run in grid.runs]
    assert len(methods) == len(set(methods))
    assert set(methods) == (resnet_models & set(METHODS)) | {"supervised"}
    assert resnet_models <= set(METHODS)  # every lightly ResNet model is in sslbench
    backbone = create_backbone("resnet18", image_size=128)
    for run in grid.runs:
        cfg = run.cfg
        assert (cfg.dataset.name, cfg.backbone.name) == ("imagenette2-160", "resnet18")
        assert (cfg.image_size, cfg.epochs, cfg.batch_size) == (128, 200, 256)
        assert (cfg.eval.knn_k, cfg.eval.knn_temperature) == (200, 0.1)
        if cfg.method.name != "supervised":
            lightly_transform(cfg, backbone)  # lightly can make these views: equal pipelines
    simclr = next(run.cfg for run in grid.runs if run.cfg.method.name == "simclr")
    assert simclr.transform.ops.color_jitter.brightness == 0.4  # lightly's cj_strength 0.5


def test_dry_run_lists_the_study_and_runs_nothing(tmp_path, capsys) -> None:
    code = main(["pretrain", "-m", "experiment=study_imagenette", f"run_dir={tmp_path}",
                 "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "grid: 50 runs, 0 completed earlier, 50 to run" in out
    assert "[50/50] method=vicregl method.alpha=0.95 transform=dcl  new" in out
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_user_shrinks_a_study_by_selecting_its_rows_and_columns(tmp_path) -> None:
    grid = expand(["experiment=study_imagenette", "method=simclr,vicregl", "transform=lorot",
                   "epochs=2", "dataset.max_train=500", f"run_dir={tmp_path}"])  # fmt: skip
    assert _labels(grid) == [
        "method=simclr transform=lorot",
        *(f"method=vicregl method.alpha={a} transform=lorot" for a in (0.25, 0.5, 0.75, 0.95)),
    ]
    for run in grid.runs:
        assert (run.cfg.epochs, run.cfg.dataset.max_train) == (2, 500)
        assert run.run_dir.parent == tmp_path  # run_dir=D: the grid's runs go under D
    only_alpha = expand(["experiment=study_imagenette", "method.alpha=0.50", "transform=dcl"])
    assert _labels(only_alpha) == ["method=vicregl method.alpha=0.5 transform=dcl"]
    with pytest.raises(ConfigError, match="no run of experiment study_imagenette has method=foo"):
        expand(["experiment=study_imagenette", "method=foo"])


def test_sweep_syntax_products_ranges_and_globs() -> None:
    grid = expand(["method=glob(sim*,exclude=[simclr_*,simmim])", "seed=range(0,2)", "epochs=3"])
    assert _labels(grid) == ["method=simclr seed=0", "method=simclr seed=1",
                             "method=simsiam seed=0", "method=simsiam seed=1"]  # fmt: skip
    assert {run.cfg.epochs for run in grid.runs} == {3}
    assert len(expand(["seed=0,0"]).runs) == 1  # the same run is one run, one folder
    with pytest.raises(ConfigError, match="unknown method 'bogus'"):
        expand(["method=simclr,bogus"])
    with pytest.raises(ConfigError, match="not intervals"):
        expand(["method.optimizer.lr=interval(0,1)"])
    with pytest.raises(ConfigError, match="matches no transform"):
        expand(["transform=glob(nothing*)"])


def test_a_grid_run_and_the_same_single_run_share_a_folder() -> None:
    from sslbench.config import compose

    (run,) = expand(["experiment=study_imagenette", "method=byol", "transform=dcl"]).runs
    single = compose(["dataset=imagenette2", "backbone=resnet18", "epochs=200", "batch_size=256",
                      "image_size=224", "method=byol", "transform=dcl"])  # fmt: skip
    assert run.cfg.run_dir == single.run_dir


def test_an_experiment_grid_needs_multirun(capsys) -> None:
    assert main(["pretrain", "experiment=study_imagenette"]) == 2
    assert "grid of 50 runs; run it with sslbench pretrain -m" in capsys.readouterr().err


def test_each_concurrent_child_gets_its_share_of_threads_and_its_own_gpu(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("sslbench.grid.local.available_cores", lambda: 16)
    assert child_env(0, 1, 0).get("OMP_NUM_THREADS") == __import__("os").environ.get(
        "OMP_NUM_THREADS"
    )  # one job: the environment as it is
    envs = [child_env(slot, 4, 2) for slot in range(4)]
    assert {env["OMP_NUM_THREADS"] for env in envs} == {"4"}
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "0", "1"]
    assert "CUDA_VISIBLE_DEVICES" not in child_env(0, 2, 0)


def test_a_killed_run_is_recorded_failed_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    """An out-of-memory kill (SIGKILL) leaves results.json saying `running`; the grid marks
    it failed with the signal, runs the next run, and exits non-zero."""
    grid = expand(["method=simclr,byol", f"run_dir={tmp_path}"])
    victim = grid.runs[0].run_dir

    def command(run_dir: Path) -> list[str]:
        results = str(run_dir / "results.json")
        if run_dir == victim:  # says `running`, then dies as the kernel's OOM killer would
            code = (f"import json, os; open({results!r}, 'w').write(json.dumps("
                    f"{{'status': 'running'}})); os.kill(os.getpid(), 9)")  # fmt: skip
        else:
            code = (f"import json; open({results!r}, 'w').write("
                    f"json.dumps({{'status': 'completed', 'linear_top1': 0.5, "
                    f"'pretrain_seconds': 60}}))")  # fmt: skip
        return [sys.executable, "-c", code]

    monkeypatch.setattr("sslbench.grid.local.child_command", command)
    assert run_grid(grid) == 1
    out = capsys.readouterr().out
    failed = read_results(victim)
    assert failed["status"] == "failed"
    assert f"killed by {signal.SIGKILL.name} (out of memory?)" in failed["error"]
    assert failed["method"] == "simclr"  # the contract's fields, from the config
    assert read_results(grid.runs[1].run_dir)["status"] == "completed"
    assert "[2/2] method=byol  completed  top-1 0.500  1.0 min" in out
    assert "2 runs: 1 completed (0 earlier), 1 not completed" in out


def test_slurm_launcher_keys_reach_sbatch(tmp_path) -> None:
    """launcher=slurm composes hydra-submitit-launcher's SlurmLauncher with our keys, and
    submitit turns them into the sbatch options a cluster would get (nothing submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from sslbench.grid.slurm import plugin_launcher

    grid = expand(["launcher=slurm", "launcher.partition=gpu", "launcher.timeout_min=90",
                   "launcher.setup=[module load cuda]", "method=simclr,byol"])  # fmt: skip
    assert len(grid.runs) == 2 and grid.launcher.partition == "gpu"
    assert grid.runs[0].cfg.run_dir == expand(["method=simclr"]).runs[0].cfg.run_dir
    with plugin_launcher(grid.launcher, tmp_path) as launcher:
        assert type(launcher).__name__ == "SlurmLauncher"
        params = launcher.params
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 1
    sbatch = _make_sbatch_string(
        command="sslbench", folder=str(tmp_path), partition=params["partition"],
        time=params["timeout_min"], gpus_per_node=params["gpus_per_node"],
        cpus_per_task=params["cpus_per_task"], mem=f"{params['mem_gb']}GB",
        setup=params["setup"],
    )  # fmt: skip
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "module load cuda"):  # fmt: skip
        assert line in sbatch
    with pytest.raises(ConfigError, match="unknown launcher 'pbs'"):
        expand(["launcher=pbs"])


def test_the_launcher_is_picked_by_name_and_gets_the_runs_to_do(tmp_path, monkeypatch, capsys):
    """Every launcher is made from the grid and handed the runs still to do; one that says it
    was interrupted makes the grid exit 130."""
    from sslbench.grid.launch import LAUNCHERS, launcher_for
    from sslbench.grid.local import LocalLauncher
    from sslbench.grid.slurm import SubmititLauncher

    grid = expand(["method=simclr,byol", f"run_dir={tmp_path}"])
    assert isinstance(launcher_for(grid), LocalLauncher)
    for name in ("slurm", "submitit_local"):
        assert isinstance(launcher_for(expand([f"launcher={name}"])), SubmititLauncher)

    handed = []

    class Interrupted:
        def __init__(self, grid) -> None:
            self.total = len(grid.runs)

        def launch(self, runs) -> bool:
            handed.extend(runs)
            return True

    monkeypatch.setitem(LAUNCHERS, "local", Interrupted)
    assert run_grid(grid) == 130
    assert handed == grid.runs
    assert "2 runs: 0 completed (0 earlier), 2 not completed" in capsys.readouterr().out


def test_the_launchers_import_only_downward() -> None:
    """What both launchers share sits below them: SLURM's launcher does not import the grid
    (which picks it), and neither imports torch."""
    code = ("import sys, sslbench.grid.slurm, sslbench.grid.runs; print(sorted(m for m in "
            "('sslbench.grid.launch', 'torch') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny(*more: str) -> list[str]:
    return [o for o in TINY_RUN if not o.startswith("progress_bar")] + list(more)


@needs_fmnist
@pytest.mark.slow
def test_tiny_grid_runs_skips_completed_runs_and_reports(tmp_path, capsys) -> None:
    """2 methods x 2 pipelines on real Fashion-MNIST: 4 completed run folders in child
    processes, a 2x2 table; run again, it runs nothing."""
    args = ["pretrain", "-m", "method=simclr,byol", "transform=simclr,orthogonality",
            *_tiny(f"run_dir={tmp_path}")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    folders = sorted(p.parent for p in tmp_path.glob("*/results.json"))
    assert len(folders) == 4
    results = [read_results(folder) for folder in folders]
    assert {r["status"] for r in results} == {"completed"}
    assert {(r["method"], r["transform"]) for r in results} == {
        ("simclr", "simclr"), ("simclr", "orthogonality"),
        ("byol", "simclr"), ("byol", "orthogonality"),
    }  # fmt: skip
    assert len({json.dumps(r["test_subset"]) for r in results}) == 1
    assert "4 runs: 4 completed (0 earlier), 0 not completed" in out
    stamps = {f: (f / "results.json").stat().st_mtime_ns for f in folders}

    assert main(args) == 0  # again: everything is completed
    out = capsys.readouterr().out
    assert "grid: 4 runs, 4 completed earlier, 0 to run" in out
    assert {f: (f / "results.json").stat().st_mtime_ns for f in folders} == stamps

    assert main(["report", str(tmp_path), "--reference", "study"]) == 0
    report = capsys.readouterr().out
    table = report.split("### Linear top-1")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| simclr") or
            line.startswith("| byol")]  # fmt: skip
    assert len(rows) == 2 and "orthogonality study" in table
    assert all(row.count("0.") >= 2 and "min" not in row for row in rows)  # accuracy only
    costs = report.split("### Pretraining minutes / peak host memory")[1].split("###")[0]
    cost_rows = [line for line in costs.splitlines() if line.startswith(("| simclr", "| byol"))]
    assert len(cost_rows) == 2 and all(row.count(" / ") == 2 for row in cost_rows)

    page = tmp_path / "report" / "grid.html"
    assert main(["report", str(tmp_path), "--format", "html", "--out", str(page)]) == 0
    assert page.read_text().count("data:image/png;base64,") >= 3  # plots inside the page
    assert (page.parent / "grid_fashion-mnist_top1_vs_minutes.png").stat().st_size > 0


@needs_fmnist
@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path, capsys) -> None:
    """An experiment of the user's own (a YAML file) with an explicit run list, one of whose
    runs cannot train (VICRegL's local grid needs feature maps larger than resnet10t's 1x1 at
    32 px): that run fails with its one-line error, the other completes, the grid exits 1;
    a rerun retries only the failed one."""
    experiment = tmp_path / "mine.yaml"
    experiment.write_text("# @package _global_\ngrid:\n  runs: [[method=simclr], [method=vicregl]]")
    runs_root = tmp_path / "runs"
    args = ["pretrain", "-m", f"experiment={experiment}", *_tiny(f"run_dir={runs_root}")]
    assert main(args) == 1
    out = capsys.readouterr().out
    by_method = {r["method"]: r for r in map(read_results, runs_root.glob("*"))}
    assert by_method["simclr"]["status"] == "completed"
    failed = by_method["vicregl"]
    assert failed["status"] == "failed"
    assert "VICRegL needs feature maps larger than 1x1" in failed["error"]
    assert "[2/2] method=vicregl  failed" in out

    assert main(args) == 1
    assert "grid: 2 runs, 1 completed earlier, 1 to run" in capsys.readouterr().out


@needs_fmnist
@pytest.mark.slow
def test_submitit_local_launcher_runs_a_grid(tmp_path, capsys) -> None:
    """launcher=slurm's machinery (hydra-submitit-launcher, submitit) with submitit's local
    executor: the run is a submitit job, completed in its folder."""
    args = ["pretrain", "-m", "launcher=submitit_local", "method=simclr",
            *_tiny(f"run_dir={tmp_path}")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "submitting 1 jobs (submitit_local)" in out
    (folder,) = [p.parent for p in tmp_path.glob("*/results.json")]
    assert read_results(folder)["status"] == "completed"
    assert list((tmp_path / ".submitit").glob("*/.submitit/*/*_log.out"))
