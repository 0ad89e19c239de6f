"""The public surface is exactly what `__all__` says."""

from __future__ import annotations

import gatewayz_metrics


def test_all_names_exist_once() -> None:
    """Every name in `__all__` exists, once (ruff's RUF022 keeps the order sorted)."""
    names = gatewayz_metrics.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(gatewayz_metrics, name), name


def test_public_objects_are_exported() -> None:
    """Every public object defined by the package's modules is listed in `__all__`."""
    public = {
        name
        for name, value in vars(gatewayz_metrics).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("gatewayz")
    }
    assert public <= set(gatewayz_metrics.__all__)
