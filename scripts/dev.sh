#!/usr/bin/env bash
# The two quick-start commands, on a fresh machine:
#   bash scripts/dev.sh demo    # the demo gateway on http://127.0.0.1:8000 with /metrics
#   bash scripts/dev.sh test    # the whole test suite, as CI runs it (extra arguments go to pytest)
# Also:
#   bash scripts/dev.sh quick   # the quick loop: every test not marked `slow` (no real servers)
#   bash scripts/dev.sh lint    # ruff check, ruff format --check, mypy --strict (package and tests)
#   bash scripts/dev.sh bench   # the benchmarks of benchmarks/
#   bash scripts/dev.sh python -m examples.gateway.load ...   # any command of the venv's Python
# The first run creates .venv/ (or $GATEWAYZ_VENV) and installs the package in editable mode with
# its `dev` extra and the benchmark peers; later runs reinstall only when pyproject.toml or
# benchmarks/requirements.txt changed. $PYTHON picks the interpreter (default: python3).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="${GATEWAYZ_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

say() { echo "dev.sh: $*" >&2; }

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    say "gatewayz-metrics needs Python 3.10 or newer; $python is $("$python" -V 2>&1 || echo missing)"
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment $venv with $("$python" -V 2>&1)"
    "$python" -m venv "$venv"
fi
stamp="$venv/.gatewayz-installed"
wanted=$({ cat pyproject.toml; cat benchmarks/requirements.txt 2>/dev/null || true; } | sha256sum)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    started=$SECONDS
    say "installing into $venv (first run, or pyproject.toml changed; about a minute):"
    say "  - gatewayz-metrics from this checkout, editable, with the dev extra" \
        "(pytest, httpx, uvicorn, starlette, fastapi, quart, gunicorn, hypothesis, ruff, mypy, ...)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[dev]"
    if [ -f benchmarks/requirements.txt ]; then
        say "  - the benchmark peers of benchmarks/requirements.txt (starlette-exporter, ...)"
        "$venv/bin/python" -m pip install --quiet -r benchmarks/requirements.txt
    fi
    echo "$wanted" > "$stamp"
    say "installed in $((SECONDS - started)) s; later runs skip this step"
fi

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    demo) exec "$venv/bin/python" -m examples.gateway "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    quick) exec "$venv/bin/python" -m pytest -m "not slow" "$@" ;;
    lint)
        "$venv/bin/ruff" check .
        "$venv/bin/ruff" format --check .
        "$venv/bin/mypy" --strict gatewayz_metrics
        "$venv/bin/mypy" --strict tests
        ;;
    bench) exec "$venv/bin/python" -m benchmarks.run "$@" ;;
    python) exec "$venv/bin/python" "$@" ;;
    *)
        echo "usage: bash scripts/dev.sh demo|test|quick|lint|bench|python [args...]" >&2
        exit 2
        ;;
esac
