"""What each registered method declares about itself: its lightly reference transform and
its test settings, so that a new method is one module, one YAML file and one registry line,
and a method that forgets to say fails clearly instead of falling through."""

from __future__ import annotations

import pytest
from conftest import method_names
from omegaconf import OmegaConf

from sslbench.config import compose
from sslbench.methods import SSLMethod, method_class
from sslbench.tools import lightly_views


@pytest.mark.parametrize("name", method_names())
def test_each_method_names_its_lightly_transform(name: str) -> None:
    cls = method_class(name)
    assert hasattr(cls, "lightly_transform"), f"{cls.__name__} must say (None: lightly has none)"
    assert cls.lightly_transform is None or cls.lightly_transform in lightly_views.TRANSFORMS


@pytest.mark.parametrize("name", method_names(local_views=True))
def test_a_multicrop_method_names_a_multicrop_transform(name: str) -> None:
    # The two-view transform would silently drop the local views of bench's lightly row.
    assert method_class(name).lightly_transform not in (None, "pipeline")


@pytest.mark.parametrize("name", method_names())
def test_each_methods_test_settings_compose(name: str) -> None:
    cls = method_class(name)
    for overrides in (cls.small_overrides, cls.learning_run_overrides):
        assert compose([f"method={name}", *overrides]).method.name == name


class _Silent(SSLMethod):
    """A method class that does not say which lightly transform makes its views."""


class _NoLightly(SSLMethod):
    lightly_transform = None


class _Unbuildable(SSLMethod):
    lightly_transform = "AIMTransform"


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_Silent, "method 'new' does not name its lightly transform: set _Silent"),
        (_NoLightly, "lightly has no reference transform for method 'new'"),
        (_Unbuildable, "names lightly transform 'AIMTransform', which sslbench cannot build"),
    ],
)
def test_a_method_without_a_lightly_transform_is_one_clear_error(
    cls: type[SSLMethod], message: str, monkeypatch
) -> None:
    monkeypatch.setattr(lightly_views, "method_class", lambda name: cls)
    cfg = OmegaConf.create({"method": {"name": "new"}})
    with pytest.raises(ValueError, match=message):
        lightly_views.lightly_transform(cfg, None)  # type: ignore[arg-type]
