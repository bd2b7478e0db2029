"""Every shipped config and experiment keeps its run folder: the config hash of each group
option and of each run of each experiment, against a snapshot. A move of code, a new key or
a new default that changed one would orphan every run folder made before it (a rerun would
no longer find its results). A change that means to change a hash regenerates the snapshot
(``python tests/config/test_config_hashes.py --write``) and says why in its commit; so does one
that adds options, to guard them too. The group options are checked in the quick loop; the
experiments' runs (about 270 Hydra composes, half a minute) in the slow suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sslbench.config import compose
from sslbench.config.identity import config_hash
from sslbench.config.schema import conf_dir

SNAPSHOT = Path(__file__).parent / "config_hashes.json"

#: Options that need more than their name to compose: what else the snapshot gives them.
NEEDS = {
    "dataset/folder": ["dataset.path=/data/images"],
    "dataset/nabirds": ["dataset.path=/data/nabirds"],
    "pretext/lorot": ["transform=lorot"],
    "pretext/dcl": ["transform=dcl"],
}


def _options() -> dict[str, list[str]]:
    """group/option -> the overrides that compose it, for every shipped group option (the
    experiments apart, and the launchers: they say where runs go, not what they compute)."""
    options = {}
    for folder in sorted(p for p in conf_dir().iterdir() if p.is_dir()):
        if folder.name in ("experiment", "launcher"):
            continue
        for yaml in sorted(folder.glob("*.yaml")):
            name = f"{folder.name}/{yaml.stem}"
            options[name] = [f"{folder.name}={yaml.stem}", *NEEDS.get(name, [])]
    return options


def option_hashes() -> dict[str, str]:
    """The config hash of every group option."""
    return {name: config_hash(compose(args)) for name, args in _options().items()}


def experiment_hashes() -> dict[str, str]:
    """The config hash of every run of every experiment."""
    from sslbench.grid.expand import expand

    hashes = {}
    for yaml in sorted((conf_dir() / "experiment").glob("*.yaml")):
        if yaml.stem.startswith("_"):  # a part that experiments include, not one to run
            continue
        for run in expand([f"experiment={yaml.stem}"]).runs:
            label = " ".join(run.label) or "(the experiment's one run)"
            hashes[f"experiment/{yaml.stem}: {label}"] = config_hash(run.cfg)
    return hashes


def current_hashes() -> dict[str, str]:
    """The config hash of every group option and of every run of every experiment."""
    return {**option_hashes(), **experiment_hashes()}


def _assert_kept(current: dict[str, str], experiments: bool) -> None:
    expected = {k: v for k, v in json.loads(SNAPSHOT.read_text()).items()
                if k.startswith("experiment/") == experiments}  # fmt: skip
    changed = {k: (expected[k], current[k]) for k in expected.keys() & current.keys()
               if expected[k] != current[k]}  # fmt: skip
    assert not changed, f"config hashes changed (run folders would be orphaned): {changed}"
    gone = sorted(expected.keys() - current.keys())
    assert not gone, f"gone: {gone} (a removed option or run: regenerate with --write)"
    # An option added since the snapshot (a new method's YAML) has no run folder yet to
    # orphan: it passes, and is guarded once the snapshot is regenerated with --write.


def test_every_group_option_keeps_its_hash() -> None:
    _assert_kept(option_hashes(), experiments=False)


@pytest.mark.slow
def test_every_experiment_run_keeps_its_hash() -> None:
    _assert_kept(experiment_hashes(), experiments=True)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(current_hashes(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
