#!/usr/bin/env bash
# Transparency: the frameworks' own test suites, bare and with every application wrapped in
# PrometheusMiddleware, must give the same per-test results and the same ASGI messages.
#   bash scripts/transparency.sh [starlette] [fastapi] [quart]   (default: all three)
# Uses the venv in $GATEWAYZ_VENV (default .venv), installs the suites' test dependencies
# (scripts/transparency/requirements.txt) and downloads the sdists of the installed
# Starlette and FastAPI versions from PyPI. Exits non-zero on any difference.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="${GATEWAYZ_VENV:-$root/.venv}"
py="$venv/bin/python"
work="${GATEWAYZ_TRANSPARENCY_WORK:-$root/.transparency}"
here="$root/scripts/transparency"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(starlette fastapi quart)

"$py" -m pip install --quiet -r "$here/requirements.txt"
mkdir -p "$work"
# Set ordering (e.g. an Allow header built from a set) must not differ between runs.
export PYTHONHASHSEED=0
export PYTHONPATH="$here:$root${PYTHONPATH:+:$PYTHONPATH}"

# FastAPI's full suite (~4,400 tests, 40 s just to collect its tutorials) is too slow for
# CI on 2 cores: these files exercise middleware, streaming and SSE, exceptions,
# websockets, lifespan events, routing, responses and dependency clean-up.
fastapi_files=(
    test_*middleware*.py test_*stream*.py test_sse*.py test_*exception*.py
    test_*websocket*.py test_ws_*.py test_*event*.py test_*lifespan*.py test_*rout*.py
    test_dependency_after_yield*.py test_dependency_yield*.py test_dependency_contextmanager.py
    test_response_*.py test_application.py test_include_*.py test_background*.py
    test_request_body_limits.py test_async_dependency_cleanup.py test_default_response_class*.py
    test_empty_router.py test_extra_routes.py test_http_connection_injection.py
)

sdist() {  # sdist NAME -> prints the unpacked directory of the installed version's sdist
    local name=$1 version dir
    version=$("$py" -c "from importlib.metadata import version; print(version('$name'))")
    dir="$work/$name-$version"
    if [ ! -d "$dir/tests" ]; then
        "$py" -m pip download --quiet --no-deps --no-binary :all: "$name==$version" -d "$work/sdist" >&2
        tar -xzf "$work/sdist/$name-$version.tar.gz" -C "$work"
    fi
    echo "$dir"
}

run() {  # run MODE OUT DIR PYTEST-ARGS...: one recorded run; test failures are results
    local mode=$1 out=$2 dir=$3
    shift 3
    local rc=0
    (cd "$dir" && GATEWAYZ_TRANSPARENCY=$mode GATEWAYZ_TRANSPARENCY_OUT=$out \
        nice -n 10 "$py" -m pytest -q -p no:cacheprovider -p transparency_plugin "$@") \
        > "$out.log" 2>&1 || rc=$?
    # 0: all passed, 1: some failed; both are results to compare. Anything else is not.
    if [ $rc -gt 1 ]; then
        echo "pytest $mode run in $dir failed to run (exit $rc); see $out.log" >&2
        tail -20 "$out.log" >&2
        return 2
    fi
}

compare_suite() {  # compare_suite NAME DIR "OPTIONS" PATHS...
    local name=$1 dir=$2 start=$SECONDS
    local -a options
    read -r -a options <<< "$3"
    shift 3
    local base="$work/$name"
    rm -f "$base".*.jsonl
    # bare and wrapped side by side: the suites wait more than they compute.
    run bare "$base.bare.jsonl" "$dir" "${options[@]}" "$@" &
    local bare_pid=$!
    run wrapped "$base.wrapped.jsonl" "$dir" "${options[@]}" "$@" &
    local wrapped_pid=$!
    wait $bare_pid
    wait $wrapped_pid
    local rc=0
    "$py" "$here/compare.py" "$name" "$base.bare.jsonl" "$base.wrapped.jsonl" \
        --write-diff-ids "$base.diff-ids" > "$base.first.txt" || rc=$?
    if [ $rc -ne 0 ] && [ -s "$base.diff-ids" ]; then
        # Tests whose messages differed run again, bare and wrapped, to tell a change
        # made by the middleware (in both wrapped runs) from nondeterminism.
        mapfile -t ids < "$base.diff-ids"
        run bare "$base.rerun-bare.jsonl" "$dir" "${options[@]}" "${ids[@]}" &
        bare_pid=$!
        run wrapped "$base.rerun-wrapped.jsonl" "$dir" "${options[@]}" "${ids[@]}" &
        wrapped_pid=$!
        wait $bare_pid
        wait $wrapped_pid
        rc=0
        "$py" "$here/compare.py" "$name" "$base.bare.jsonl" "$base.wrapped.jsonl" \
            --rerun-bare "$base.rerun-bare.jsonl" \
            --rerun-wrapped "$base.rerun-wrapped.jsonl" || rc=$?
    else
        cat "$base.first.txt"
    fi
    echo "   time: $((SECONDS - start)) s"
    return $rc
}

status=0
for suite in "${suites[@]}"; do
    case "$suite" in
        starlette)
            dir=$(sdist starlette)
            GATEWAYZ_TRANSPARENCY_FRAMEWORKS=starlette \
                compare_suite starlette "$dir" "-p no:asyncio" tests || status=1
            ;;
        fastapi)
            dir=$(sdist fastapi)
            files=()
            for pattern in "${fastapi_files[@]}"; do
                for file in "$dir"/tests/$pattern; do
                    [ -e "$file" ] && files+=("tests/${file##*/}")
                done
            done
            mapfile -t files < <(printf '%s\n' "${files[@]}" | sort -u)
            GATEWAYZ_TRANSPARENCY_FRAMEWORKS="starlette fastapi" \
                compare_suite fastapi "$dir" "-p no:asyncio" "${files[@]}" || status=1
            ;;
        quart)
            GATEWAYZ_TRANSPARENCY_FRAMEWORKS=quart \
                compare_suite quart "$root" "" scripts/transparency/quart_suite || status=1
            ;;
        *)
            echo "unknown suite $suite (starlette, fastapi, quart)" >&2
            exit 2
            ;;
    esac
done
exit $status
