"""Where a request's time goes inside a middleware variant: cProfile of in-process calls.

    python -m benchmarks.profile_middleware [VARIANT] [--requests N] [--top K]

Profiles the same app and requests as the overhead benchmark (default variant:
gatewayz) and prints the functions with the most own time, per request. cProfile adds
its own cost to every call, so the absolute numbers are inflated; read the split, not
the total, and time any change with `python -m benchmarks.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys

from benchmarks._variants import BY_NAME, make_app
from benchmarks._worker import _batch, _check, _scope


async def _profile(variant: str, requests: int) -> pstats.Stats:
    app = make_app()
    BY_NAME[variant].install(app)
    scopes = [_scope(i) for i in range(64)]
    await _check(app, scopes[7])
    await _batch(app, scopes, 2_000)  # warm: route index, bound children, specialisation
    profiler = cProfile.Profile()
    profiler.enable()
    await _batch(app, scopes, requests)
    profiler.disable()
    return pstats.Stats(profiler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_middleware")
    parser.add_argument("variant", nargs="?", default="gatewayz", choices=sorted(BY_NAME))
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    stats = asyncio.run(_profile(args.variant, args.requests))
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in entries.items():
        rows.append((own, cumulative, calls, f"{_short(filename)}:{line}({function})"))
    rows.sort(reverse=True)
    total = sum(own for own, *_ in rows)
    sys.stdout.write(
        f"{args.variant}: {args.requests} requests, {total / args.requests * 1e6:.1f} µs/request "
        "under cProfile (app included)\n"
        f"{'own µs/req':>10} {'cum µs/req':>10} {'calls/req':>9}  function\n"
    )
    for own, cumulative, calls, where in rows[: args.top]:
        sys.stdout.write(
            f"{own / args.requests * 1e6:10.2f} {cumulative / args.requests * 1e6:10.2f} "
            f"{calls / args.requests:9.2f}  {where}\n"
        )
    return 0


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


if __name__ == "__main__":
    sys.exit(main())
