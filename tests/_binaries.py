"""Locate the external tools (promtool, amtool, alertmanager, ...) that some tests drive."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, *alternatives: str) -> str:
    """Return the path of `name` (or of the first of `alternatives` found) on PATH.

    When none of them is installed, the calling test is skipped on a developer's machine, but
    fails when the environment variable CI is set (to anything): in CI a missing tool must never
    turn a test into a silent skip.
    """
    candidates = (name, *alternatives)
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is not None:
            return path
    wanted = " or ".join(candidates)
    if "CI" in os.environ:
        pytest.fail(f"{wanted} not found on PATH, and CI is set: install it", pytrace=False)
    pytest.skip(f"{wanted} not found on PATH (with CI set, this would fail)")
