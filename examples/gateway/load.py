"""Realistic traffic for the demo gateway, for a bounded time, to a local address only.

    python -m examples.gateway.load --url http://127.0.0.1:8000 --duration 60 [--concurrency 8]

Each client draws its next request from a shuffled deck of scenarios, so every scenario
occurs in every few dozen requests: completions and streams over several providers and
models, repeated prompts (cache hits), keys with a tiny rate limit (429), a key allowed one
request at a time sending two at once (429), an unknown key and a revoked one (401), keys
without credits (402), an unknown model (404), a malformed body (400), a provider with outage
windows (its models fall back to others while it is down), and the read-only endpoints.

`run_load(url, duration, ...)` does the same from Python and returns the summary; `drive()`
runs the same traffic on any `httpx.AsyncClient` (the demo's built-in traffic uses it
in process).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict
from urllib.parse import urlsplit

import httpx

from examples.gateway.app import DEMO_KEYS, UNKNOWN_KEY
from examples.gateway.providers import DEFAULT_PROVIDERS

MAX_DURATION = 600.0
"""Longest run accepted (seconds): load is for a test or a demo, not a soak."""
MAX_CONCURRENCY = 64
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DRAIN_SECONDS = 10.0
"""After the deadline, how long requests already sent may take to finish before they are
cancelled (a provider that hangs until the gateway's timeout, a long stream)."""
REQUEST_TIMEOUT = 30.0
TRANSPORT_ERROR_PAUSE = 0.5
"""Seconds a client waits after a request that got no answer at all."""

_TOPICS = (
    "token buckets",
    "Prometheus histograms",
    "server-sent events",
    "SQLite indexes",
    "LRU caches",
    "exponential backoff",
    "vector databases",
    "time to first token",
)
_ASKS = ("Explain", "Summarise", "Write a haiku about", "List three facts about", "Compare")
# Popular questions, asked again and again: these are what the response cache is for.
_FAQ = (
    "What is the capital of France?",
    "How do I reset my API key?",
    "Translate 'good morning' into Spanish.",
    "What does HTTP status 429 mean?",
)
_CACHED_MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3-5-haiku")
_UNKNOWN_MODEL = "mistral/mistral-large-2411"

# (scenario, copies per deck): the deck's composition is the traffic mix.
_DECK: tuple[tuple[str, int], ...] = (
    ("chat", 6),
    ("chat_stream", 6),
    ("cached_prompt", 5),
    ("outage_provider", 2),
    ("rate_limited_key", 3),
    ("concurrent_pair", 1),
    ("trial_key", 1),
    ("no_credits", 1),
    ("invalid_key", 1),
    ("revoked_key", 1),
    ("unknown_model", 1),
    ("bad_request", 1),
    ("list_models", 1),
    ("health", 1),
)


class LoadSummary(TypedDict):
    """What a run did: requests by HTTP status and by scenario."""

    url: str
    duration_seconds: float
    requests: int
    by_status: dict[str, int]
    by_scenario: dict[str, int]
    transport_errors: int


def check_url(url: str) -> str:
    """`url` without a trailing slash, or `ValueError` unless it is http(s) on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    host = parts.hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing to send load to {host!r}: this tool only targets a gateway on this "
            f"machine ({', '.join(sorted(LOOPBACK_HOSTS))}); start the demo with "
            "`python -m examples.gateway` and use --url http://127.0.0.1:8000"
        )
    return url.rstrip("/")


def _check(duration: float, concurrency: int) -> None:
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be > 0 and <= {MAX_DURATION:g} seconds, got {duration!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be an int, got {concurrency!r}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")


class _Client:
    """One simulated client: draws scenarios from its own seeded deck and sends them."""

    def __init__(self, http: httpx.AsyncClient, rng: random.Random, models: Sequence[str]) -> None:
        self.http = http
        self.rng = rng
        self.models = list(models)
        self.deck: list[str] = []
        self.keys: dict[str, list[str]] = {}
        for demo in DEMO_KEYS:
            self.keys.setdefault(demo.role, []).append(demo.key)
        in_outage = {profile.name for profile in DEFAULT_PROVIDERS if profile.outages}
        self.outage_models = [
            model for model in self.models if model.split("/", 1)[0] in in_outage
        ] or self.models
        self.scenarios: dict[str, Callable[[], Awaitable[int]]] = {
            "chat": lambda: self._chat(self._key("regular")),
            "chat_stream": lambda: self._chat(self._key("regular"), stream=True),
            "cached_prompt": self._cached_prompt,
            "outage_provider": self._outage_provider,
            "rate_limited_key": lambda: self._chat(self._key("rate_limited")),
            "concurrent_pair": self._concurrent_pair,
            "trial_key": lambda: self._chat(self._key("trial")),
            "no_credits": lambda: self._chat(self._key("no_credits")),
            "invalid_key": lambda: self._chat(UNKNOWN_KEY),
            "revoked_key": lambda: self._chat(self._key("revoked")),
            "unknown_model": lambda: self._chat(self._key("regular"), model=_UNKNOWN_MODEL),
            "bad_request": self._bad_request,
            "list_models": lambda: self._get("/v1/models"),
            "health": lambda: self._get("/health"),
        }

    def next_scenario(self) -> str:
        if not self.deck:
            self.deck = [name for name, copies in _DECK for _ in range(copies)]
            self.rng.shuffle(self.deck)
        return self.deck.pop()

    def _key(self, role: str) -> str:
        return self.rng.choice(self.keys[role])

    def _prompt(self) -> str:
        # A serial number makes each prompt unique: these are cache misses.
        ask, topic = self.rng.choice(_ASKS), self.rng.choice(_TOPICS)
        return f"{ask} {topic}. (#{self.rng.randrange(10**9)})"

    def _body(self, model: str, prompt: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": prompt},
            ],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _post(self, key: str, body: dict[str, Any]) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        if not body.get("stream"):
            response = await self.http.post("/v1/chat/completions", json=body, headers=headers)
            return response.status_code
        async with self.http.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            # Read the stream to its end, as a chat client does.
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    break
            return response.status_code

    async def _chat(self, key: str, *, stream: bool = False, model: str | None = None) -> int:
        body = self._body(model or self.rng.choice(self.models), self._prompt(), stream=stream)
        if self.rng.random() < 0.3:
            body["max_tokens"] = self.rng.choice((16, 32, 64))
        return await self._post(key, body)

    async def _cached_prompt(self) -> int:
        # Identical requests (same model, messages, no max_tokens): the cache answers them.
        models = [model for model in _CACHED_MODELS if model in self.models] or self.models[:1]
        body = self._body(self.rng.choice(models), self.rng.choice(_FAQ), stream=False)
        return await self._post(self._key("regular"), body)

    async def _outage_provider(self) -> int:
        stream = self.rng.random() < 0.5
        return await self._chat(
            self._key("regular"), stream=stream, model=self.rng.choice(self.outage_models)
        )

    async def _concurrent_pair(self) -> int:
        # Two requests at once with a key allowed one at a time: the gateway refuses one
        # (its own concurrency limit, not a provider's). The refusal's status is reported.
        key = self._key("one_at_a_time")
        statuses = await asyncio.gather(self._chat(key), self._chat(key))
        return max(statuses)

    async def _bad_request(self) -> int:
        body = {"model": self.rng.choice(self.models), "messages": []}
        return await self._post(self._key("regular"), body)

    async def _get(self, path: str) -> int:
        return (await self.http.get(path)).status_code


async def _models(http: httpx.AsyncClient) -> list[str]:
    """The gateway's models (its /v1/models), or the demo's defaults if it cannot tell."""
    try:
        response = await http.get("/v1/models")
        models = [str(entry["id"]) for entry in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        models = []
    return models or [model.id for profile in DEFAULT_PROVIDERS for model in profile.models]


async def drive(
    http: httpx.AsyncClient,
    *,
    duration: float | None,
    concurrency: int,
    seed: int = 0,
    think_time: tuple[float, float] = (0.0, 0.0),
) -> LoadSummary:
    """Send the traffic mix with `concurrency` clients on `http` for `duration` seconds
    (until cancelled if None); requests still running `DRAIN_SECONDS` after the end are
    cancelled. Transport errors are counted, never raised."""
    models = await _models(http)
    by_status: Counter[str] = Counter()
    by_scenario: Counter[str] = Counter()
    transport_errors = 0
    started = time.monotonic()
    deadline = None if duration is None else started + duration

    async def client(index: int) -> None:
        nonlocal transport_errors
        simulated = _Client(http, random.Random(f"{seed}:{index}"), models)
        low, high = think_time
        while deadline is None or time.monotonic() < deadline:
            scenario = simulated.next_scenario()
            by_scenario[scenario] += 1
            try:
                status = await simulated.scenarios[scenario]()
            except httpx.HTTPError:
                transport_errors += 1
                # A gateway that is down refuses at once: back off instead of spinning.
                await asyncio.sleep(TRANSPORT_ERROR_PAUSE)
            else:
                by_status[str(status)] += 1
            if high > 0:
                await asyncio.sleep(simulated.rng.uniform(low, high))

    tasks = [asyncio.create_task(client(index)) for index in range(concurrency)]
    try:
        if duration is None:
            await asyncio.gather(*tasks)
        else:
            await asyncio.wait(tasks, timeout=duration + DRAIN_SECONDS)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        # A bug in a client must not pass for a quiet run.
        if isinstance(result, Exception):
            raise result
    return LoadSummary(
        url=str(http.base_url),
        duration_seconds=round(time.monotonic() - started, 3),
        requests=sum(by_status.values()) + transport_errors,
        by_status=dict(sorted(by_status.items())),
        by_scenario=dict(sorted(by_scenario.items())),
        transport_errors=transport_errors,
    )


async def run_load(url: str, duration: float, concurrency: int = 8, seed: int = 0) -> LoadSummary:
    """Drive the demo's traffic mix against the gateway at `url` (loopback only) for
    `duration` seconds (at most `MAX_DURATION`) and return what happened."""
    base_url = check_url(url)
    _check(duration, concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as http:
        # A short pause between requests keeps a client from spinning on instant refusals.
        return await drive(
            http, duration=duration, concurrency=concurrency, seed=seed, think_time=(0.0, 0.05)
        )


def format_summary(summary: LoadSummary) -> str:
    """The summary as a few lines of text."""
    seconds = summary["duration_seconds"]
    rate = summary["requests"] / seconds if seconds else 0.0
    lines = [
        f"{summary['requests']} requests to {summary['url']} in {seconds:.1f} s ({rate:.1f}/s)",
        "by status:",
        *(f"  {status}  {count}" for status, count in summary["by_status"].items()),
        f"transport errors: {summary['transport_errors']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gateway.load",
        description="Drive realistic traffic against the demo gateway on this machine.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    parser.add_argument(
        "--duration", type=float, required=True, help=f"seconds, at most {MAX_DURATION:g}"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=0, help="seed of the traffic mix")
    args = parser.parse_args(argv)
    try:
        check_url(args.url)
        _check(args.duration, args.concurrency)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    summary = asyncio.run(run_load(args.url, args.duration, args.concurrency, args.seed))
    print(format_summary(summary))
    if summary["requests"] and summary["transport_errors"] == summary["requests"]:
        print(f"error: no request reached {args.url}; is the gateway running?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
