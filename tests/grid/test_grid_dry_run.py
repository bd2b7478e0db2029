"""What a grid's selection refuses, and what its dry run says before anything runs: every
misspelt value, the device, the data to download, the expected time and its source, and
run folders that name VICRegL's α (while a folder made under the older name is still found)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error

from sslbench.cli import main
from sslbench.config import compose
from sslbench.grid.expand import expand

STUDY = ["pretrain", "-m", "experiment=study_imagenette"]


@pytest.fixture
def no_gpu_no_data(tmp_path, monkeypatch) -> Path:
    """A machine without a GPU (for the run, as for nvidia-smi) and with no dataset yet."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path / "data"))
    return tmp_path


def test_every_misspelt_selection_value_is_named_with_the_valid_ones(capsys) -> None:
    """A valid value beside a misspelt one used to hide it: the grid lost a row, exit 0."""
    args = [*STUDY, "method=simclr,simsiamm", "transform=lorot,dcll", "--dry-run"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "no run of experiment study_imagenette has method=simsiamm" in err
    assert "its values: barlowtwins, byol, simclr, simsiam, swav, vicreg, vicregl" in err
    assert "transform=dcll (its values: baseline, simclr, orthogonality, lorot, dcl)" in err
    assert main([*STUDY, "method.alpha=0.5,0.6", "--dry-run"]) == 2
    assert "method.alpha=0.6 (its values: 0.25, 0.5, 0.75, 0.95)" in one_line_error(capsys)
    # a glob is a pattern: it selects what it matches
    grid = expand(["experiment=study_imagenette", "method=glob(sim*)", "transform=lorot,dcl"])
    assert {run.cfg.method.name for run in grid.runs} == {"simclr", "simsiam"}
    assert len(grid.runs) == 4


def test_the_dry_run_says_the_device_the_download_and_the_time(no_gpu_no_data, capsys) -> None:
    runs = no_gpu_no_data / "runs"
    assert main([*STUDY, f"run_dir={runs}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "device: CPU (no GPU found here" in out
    assert "224 px on a CPU is slow" in out
    assert "download first: imagenette2, 1.6 GB" in out
    assert "sslbench datasets prepare imagenette2" in out
    assert "expected time (an estimate, one run at a time): about " in out
    assert "50 runs from a 2-core CPU's ResNet-18 images/s" in out
    assert "on one GPU instead: about 24.2 h (one NVIDIA H200's epochs" in out
    # each run's own estimate: VICRegL's local views make it about twice SimCLR's
    assert _run_line(out, "method=simclr transform=baseline").startswith("new ~129 h ")
    vicregl = _run_line(out, "method=vicregl method.alpha=0.95 transform=baseline")
    assert vicregl.startswith("new ~281 h ")
    assert not runs.exists()  # nothing written


def test_on_a_gpu_the_dry_run_times_the_study_by_the_h200s_epochs(
    no_gpu_no_data, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("sslbench.grid.cost.gpu_names", lambda: ["NVIDIA H100 80GB HBM3"])
    assert main([*STUDY, f"run_dir={no_gpu_no_data}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "device: GPU, NVIDIA H100 80GB HBM3" in out
    assert "about 24.2 h for the 50 runs to run" in out
    assert "50 runs from one NVIDIA H200's epochs" in out
    assert "this machine's GPU is NVIDIA H100 80GB HBM3" in out
    vicregl = _run_line(out, "method=vicregl method.alpha=0.25 transform=baseline")
    assert vicregl.startswith("new ~48 min ")


def _run_line(out: str, label: str) -> str:
    """What the dry run says of the run that ``label`` tells apart: its status, expected
    time and folder (``new  ~48 min  /runs/...``)."""
    (line,) = [line for line in out.splitlines() if f"] {label}  " in line]
    return " ".join(line.split(f"] {label}  ", 1)[1].split())


def _measured_run(folder: Path, status: str, epochs: list[float], host: str) -> None:
    """A run folder as a run on ``host`` leaves it: results.json and metrics.csv."""
    folder.mkdir(parents=True)
    results = {
        "status": status, "method": "simclr", "transform": "simclr", "pretext": None,
        "dataset": "fashion-mnist", "backbone": "resnet10t", "image_size": 32,
        "batch_size": 64, "max_train": 1000, "train_images": 1000, "epochs": 100,
        "peak_gpu_memory_bytes": None, "process": {"pid": 1, "host": host},
        "started_at": "2026-12-01T10:00:00+0000", "finished_at": "2026-12-01T10:01:00+0000",
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))
    rows = [f"{i},{seconds}" for i, seconds in enumerate(epochs)]
    (folder / "metrics.csv").write_text("epoch,epoch_seconds\n" + "\n".join(rows) + "\n")


def test_the_estimate_comes_from_epochs_measured_on_this_machine(no_gpu_no_data, capsys) -> None:
    """A completed run times the same config's other seeds (steady epoch per image, plus its
    start-up and evaluation); an interrupted run, its remaining epochs; another machine's
    run, nothing."""
    common = ["dataset=fashion-mnist", "backbone=resnet10t", "image_size=32", "batch_size=64",
              "dataset.max_train=1000", "epochs=100", f"run_dir={no_gpu_no_data}"]  # fmt: skip
    grid = expand(["method=simclr,byol", "seed=0,1,2", *common])
    folder = {" ".join(run.label): run.run_dir for run in grid.runs}
    here = socket.gethostname()
    # 3 s first, 2 s steady: 60 s in all, 7 s of them epochs, so 53 s outside them
    _measured_run(folder["method=simclr seed=0"], "completed", [3.0, 2.0, 2.0], here)
    _measured_run(folder["method=simclr seed=2"], "interrupted", [2.0] * 50, here)
    _measured_run(folder["method=byol seed=0"], "completed", [0.01] * 3, "elsewhere")
    assert main(["pretrain", "-m", "method=simclr,byol", "seed=0,1,2", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _run_line(out, "method=simclr seed=0").startswith("completed /")
    assert _run_line(out, "method=simclr seed=1").startswith("new ~4 min ")  # 100 x 2 s + 53 s
    # 50 of its epochs left: 50 x 2 s + 53 s
    assert _run_line(out, "method=simclr seed=2").startswith("interrupted ~3 min ")
    assert _run_line(out, "method=byol seed=1").startswith("new ? ")  # measured elsewhere
    assert f"2 runs from epochs measured on this machine ({here})" in out
    assert "2 without an estimate" in out
    assert "data here: fashion-mnist" in out or "download first: fashion-mnist" in out


def test_vicregl_folders_name_alpha_and_a_folder_named_before_is_found(tmp_path) -> None:
    grid = expand(["experiment=study_imagenette", "method=vicregl", "transform=dcl"])
    names = [run.run_dir.name for run in grid.runs]
    assert [name.rsplit("-", 1)[0] for name in names] == [
        f"vicregl-a{alpha}-dcl-imagenette2-resnet18" for alpha in ("0.25", "0.5", "0.75", "0.95")
    ]
    single = ["method=vicregl", "method.alpha=0.25", "dataset=fashion-mnist",
              f"runs_root={tmp_path}"]  # fmt: skip
    named = Path(compose(single).run_dir)
    assert named.name.startswith("vicregl-a0.25-simclr-fashion-mnist-resnet18-")
    # the same config's folder under the name without α (sslbench before it had α) is kept
    older = tmp_path / named.name.replace("vicregl-a0.25-", "vicregl-")
    older.mkdir()
    (older / "results.json").write_text(json.dumps({"status": "completed"}))
    assert compose(single).run_dir == str(older)
    (run,) = expand([*single[:-1], f"run_dir={tmp_path}"]).runs
    assert run.run_dir == older and run.status() == "completed"  # a rerun skips it
    other = Path(compose([*single, "method.alpha=0.5"]).run_dir)  # another α: its own, named
    assert other.parent == tmp_path and other.name.startswith("vicregl-a0.5-simclr-")


def test_the_dry_run_imports_no_torch(tmp_path) -> None:
    code = (
        "import sys\n"
        "from sslbench.cli import main\n"
        f"rc = main(['pretrain', '-m', 'experiment=study_imagenette', 'run_dir={tmp_path}',"
        " '--dry-run'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "SSLBENCH_DATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "expected time (an estimate" in done.stdout
