"""Compare a bare and a wrapped run of a test suite recorded by `transparency_plugin`.

    python compare.py NAME BARE.jsonl WRAPPED.jsonl [--rerun-bare B2.jsonl --rerun-wrapped W2.jsonl]

Prints the counts and every difference; exits 1 on any difference: a test that ran in one
run only, a different outcome, a different number of wrapped applications, or different ASGI
messages (the wrapped run's recording outside the middleware, and the application's own
view inside it, must both equal the bare run's). The tests whose messages differ are run
again, bare and wrapped (`--rerun-bare`, `--rerun-wrapped`): a test whose two bare runs
differ, or whose wrapped rerun matches the bare run, is nondeterministic (a signed
timestamp, a race between a disconnect and a cancellation), reported by name, and its
messages are not counted as a difference (its outcome still is). A change the middleware
makes happens in both wrapped runs and in neither bare run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The per-test records of one run; the run's summary line is under the key ""."""
    records: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            records[record["id"]] = record
    return records


def split(records: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], int]:
    """(per-test records, applications wrapped outside any test)."""
    tests = {nodeid: record for nodeid, record in records.items() if nodeid}
    return tests, records.get("", {}).get("wrapped_outside_tests", 0)


def stream(record: dict[str, Any], name: str) -> list[list[str]]:
    return record["streams"].get(name, [])  # type: ignore[no-any-return]


def message_count(conns: list[list[str]]) -> int:
    return sum(1 for events in conns for event in events if event.startswith(("send", "receive")))


def first_difference(left: list[list[str]], right: list[list[str]]) -> str:
    flat_left = [f"[{n}] {e}" for n, events in enumerate(left) for e in events]
    flat_right = [f"[{n}] {e}" for n, events in enumerate(right) for e in events]
    diff = list(difflib.unified_diff(flat_left, flat_right, "bare", "wrapped", n=1, lineterm=""))
    return "\n".join(line[:300] for line in diff[:14])


def _nondeterministic(
    nodeid: str,
    bare_outer: list[list[str]],
    rerun_bare: dict[str, Any] | None,
    rerun_wrapped: dict[str, Any] | None,
) -> bool:
    if rerun_bare is None or rerun_wrapped is None:
        return False
    if nodeid not in rerun_bare or nodeid not in rerun_wrapped:
        return False
    again = rerun_wrapped[nodeid]
    return stream(rerun_bare[nodeid], "outer") != bare_outer or (
        stream(again, "outer") == bare_outer and stream(again, "inner") == bare_outer
    )


def compare(
    name: str,
    bare: dict[str, Any],
    wrapped: dict[str, Any],
    rerun_bare: dict[str, Any] | None = None,
    rerun_wrapped: dict[str, Any] | None = None,
) -> tuple[int, list[str]]:
    """Print the report for one suite; return (number of differences, message-diff ids)."""
    bare = split(bare)[0]
    wrapped, outside = split(wrapped)
    problems: list[str] = []
    message_diffs: list[str] = []
    nondeterministic: list[str] = []
    compared_messages = 0
    ran_apps = 0
    for nodeid in sorted(set(bare) | set(wrapped)):
        if nodeid not in bare or nodeid not in wrapped:
            where = "bare" if nodeid in bare else "wrapped"
            problems.append(f"{nodeid}: ran in the {where} run only")
            continue
        b, w = bare[nodeid], wrapped[nodeid]
        if b["outcome"] != w["outcome"]:
            problems.append(f"{nodeid}: outcome {b['outcome']} bare, {w['outcome']} wrapped")
        b_outer = stream(b, "outer")
        ran_apps += bool(b_outer)
        if b["wrapped_apps"] != w["wrapped_apps"]:
            problems.append(
                f"{nodeid}: {b['wrapped_apps']} apps wrapped bare, {w['wrapped_apps']} wrapped"
            )
        differs = []
        if stream(w, "outer") != b_outer:
            differs.append(("outside the middleware", stream(w, "outer")))
        if stream(w, "inner") != b_outer:
            differs.append(("the application's view", stream(w, "inner")))
        if differs:
            if _nondeterministic(nodeid, b_outer, rerun_bare, rerun_wrapped):
                nondeterministic.append(nodeid)
                continue
            message_diffs.append(nodeid)
            for where, conns in differs:
                problems.append(
                    f"{nodeid}: ASGI messages differ ({where}):\n{first_difference(b_outer, conns)}"
                )
            continue
        compared_messages += message_count(b_outer)

    def outcomes(run: dict[str, Any]) -> str:
        counts = Counter(record["outcome"] for record in run.values())
        return ", ".join(f"{counts[k]} {k}" for k in sorted(counts))

    print(f"== {name}")
    print(f"   bare:    {len(bare)} tests: {outcomes(bare)}")
    print(f"   wrapped: {len(wrapped)} tests: {outcomes(wrapped)}")
    apps = sum(record["wrapped_apps"] for record in wrapped.values())
    with_apps = sum(1 for record in wrapped.values() if record["wrapped_apps"])
    direct = sum(record.get("direct_wraps", 0) for record in wrapped.values())
    print(
        f"   applications wrapped: {apps} in {with_apps} tests ({direct} called directly, "
        f"not through a client) and {outside} outside tests (module-level clients); "
        f"{ran_apps} tests ran one, each through a wrapper"
    )
    print(
        f"   ASGI messages compared: {compared_messages} "
        f"(outside the middleware and in the application's view)"
    )
    print(f"   tests with different messages: {len(message_diffs)}")
    print(
        f"   nondeterministic tests (a rerun did not reproduce the difference): "
        f"{len(nondeterministic)}"
    )
    for nodeid in nondeterministic:
        print(f"     {nodeid}")
    print(f"   differences: {len(problems)}")
    for problem in problems:
        print(f"   DIFF {problem}")
    return len(problems), message_diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("bare", type=Path)
    parser.add_argument("wrapped", type=Path)
    parser.add_argument("--rerun-bare", type=Path, help="a second bare run of the differing tests")
    parser.add_argument("--rerun-wrapped", type=Path, help="a second wrapped run of them")
    parser.add_argument("--write-diff-ids", type=Path, help="write the message-diff test ids")
    args = parser.parse_args(argv)
    count, message_diffs = compare(
        args.name,
        load(args.bare),
        load(args.wrapped),
        load(args.rerun_bare) if args.rerun_bare else None,
        load(args.rerun_wrapped) if args.rerun_wrapped else None,
    )
    if args.write_diff_ids:
        args.write_diff_ids.write_text("".join(f"{nodeid}\n" for nodeid in message_diffs))
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main())
