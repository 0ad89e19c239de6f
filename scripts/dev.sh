#!/usr/bin/env bash
# The two quick-start commands, on a fresh machine:
#   bash scripts/dev.sh demo   # the demo gateway on http://127.0.0.1:8000 with /metrics
#   bash scripts/dev.sh test   # the test suite (extra arguments go to pytest)
# Also: `bash scripts/dev.sh lint` (ruff, mypy --strict) and `bash scripts/dev.sh bench`.
# The first run creates .venv/ and installs the package with its test extras; later runs
# reinstall only when pyproject.toml or benchmarks/requirements.txt changed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="${GATEWAYZ_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "gatewayz-metrics needs Python 3.10 or newer; $python is $("$python" -V 2>&1)" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.gatewayz-installed"
wanted=$({ cat pyproject.toml; cat benchmarks/requirements.txt 2>/dev/null || true; } | sha256sum)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test,lint,demo]"
    if [ -f benchmarks/requirements.txt ]; then
        "$venv/bin/python" -m pip install --quiet -r benchmarks/requirements.txt
    fi
    echo "$wanted" > "$stamp"
fi

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    demo) exec "$venv/bin/python" -m examples.gateway "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    lint)
        "$venv/bin/ruff" check .
        "$venv/bin/ruff" format --check .
        "$venv/bin/mypy" --strict gatewayz_metrics
        ;;
    bench) exec "$venv/bin/python" -m benchmarks.run "$@" ;;
    *)
        echo "usage: bash scripts/dev.sh demo|test|lint|bench [args...]" >&2
        exit 2
        ;;
esac
