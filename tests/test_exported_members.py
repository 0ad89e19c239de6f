"""The public surface is exactly what `__all__` says."""

from __future__ import annotations

from types import ModuleType

import pytest

import gatewayz_metrics
from gatewayz_metrics import multiprocess


@pytest.mark.parametrize("module", [gatewayz_metrics, multiprocess], ids=lambda m: m.__name__)
def test_all_names_exist_once(module: ModuleType) -> None:
    """Every name in the package's and `gatewayz_metrics.multiprocess`'s `__all__` exists,
    once (ruff's RUF022 keeps the order sorted)."""
    names = module.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), name


def test_public_objects_are_exported() -> None:
    """Every public object defined by the package's modules is listed in `__all__`."""
    public = {
        name
        for name, value in vars(gatewayz_metrics).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("gatewayz")
    }
    assert public <= set(gatewayz_metrics.__all__)
