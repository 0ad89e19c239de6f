"""`gatewayz_metrics.multiprocess` is public: its `__all__` is honest and matches the top level
(that its names exist once: tests/test_exported_members.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gatewayz_metrics
from gatewayz_metrics import multiprocess


def test_public_objects_are_exported() -> None:
    """Every public function the module offers is listed in its `__all__`."""
    public = {
        name
        for name, value in vars(multiprocess).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("gatewayz")
        and name != "main"  # the `python -m` entry point
    }
    assert public == set(multiprocess.__all__)


def test_top_level_re_exports_are_the_same_objects() -> None:
    """`from gatewayz_metrics import gunicorn_child_exit` keeps working: the same functions."""
    for name in multiprocess.__all__:
        assert getattr(gatewayz_metrics, name) is getattr(multiprocess, name), name


def test_the_command_checks_and_cleans_the_directory(tmp_path: Path) -> None:
    """`python -m gatewayz_metrics.multiprocess`: 1 naming a missing directory; 0 once clean."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "gatewayz_metrics.multiprocess"]
    cwd = Path(gatewayz_metrics.__file__).parent.parent
    missing = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert f"'{tmp_path / 'missing'}' does not exist" in missing.stderr

    (tmp_path / "counter_999999.db").write_bytes(b"\0" * 8)  # an earlier run's file
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    stale = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert "earlier run" in stale.stderr
    clean = subprocess.run(
        [*command, "--clean-stale"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert clean.returncode == 0, clean.stderr
    assert not list(tmp_path.glob("*.db"))
