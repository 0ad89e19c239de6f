"""The demo AI gateway: an OpenAI-compatible API over simulated providers, with API keys,
credits, a response cache, rate limits and a SQLite database, instrumented with every metric
family of gatewayz-metrics.

    python -m examples.gateway                  # 127.0.0.1:8000, /metrics, built-in traffic
    uvicorn examples.gateway.app:app            # the same app; GATEWAYZ_DEMO_TRAFFIC=1 for traffic

What feeds each family (nothing is set from a timer that invents values):

- `http_*`: `PrometheusMiddleware` around the whole application;
- `model_inference_*`, `model_time_*`, `tokens_used_total`: every upstream call runs inside
  `track_model_inference`; streams call `first_token()`, every success `set_usage()`;
- `credits_used_total`: after each completion, with `user_id` = the API key as in the wiki's
  example (the package fingerprints it);
- `api_key_usage_total`: every request that reached authentication, by outcome;
- `database_*`: every SQLite query runs inside `track_database_query(table, operation)`;
- `cache_*`: the response cache (hit or miss per lookup, its size after every change);
- `rate_limited_requests_total`, `current_rate_limit`: the token buckets (global, per key);
- `gateway_rejections_total`: every refusal by the gateway's own limits (key and global
  requests per second, a key's concurrency cap, a user without credits);
- `model_fallbacks_total`, `model_inference_retries_total`, `gateway_request_attempts`: each
  model has a fallback chain (`DEFAULT_FALLBACKS`); a failed, timed-out or rate-limited
  attempt before the first token moves the request to the next model;
- `provider_rate_limited_total`: a provider's own 429 (openrouter refuses some calls);
- `provider_cost_total`, `inference_unpriced_total`: the providers' prices per million tokens
  (`ModelInfo.cost`) as the metrics' pricing table; mixtral has no known price;
- `provider_*`: a background task, from health probes and the provider's recent results;
- `active_api_keys`, `trial_active`, `subscription_count`, `user_credit_balance`: read from
  the database by scrape-time callbacks;
- `active_connections`, `queue_size`: scrape-time callbacks over the real in-flight and
  waiting counts of the upstream connection slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from examples.gateway.providers import (
    DEFAULT_PROVIDERS,
    Chunk,
    Completion,
    ModelInfo,
    ProviderError,
    ProviderProfile,
    ProviderRateLimitedError,
    SimulatedProvider,
    Usage,
    estimate_tokens,
    model_catalog,
)
from examples.gateway.tracing import enable_tracing, tracing_wanted
from gatewayz_metrics import GatewayMetrics, InferenceHandle, ModelPrice, PrometheusMiddleware

logger = logging.getLogger("examples.gateway")

CACHE_NAME = "completions"
PAID_PLANS = ("pro", "team", "enterprise")
UNAVAILABLE_AFTER_FAILURES = 3
"""Consecutive failed calls or probes after which a provider counts as unavailable."""

DEFAULT_FALLBACKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "openai/gpt-4o": ("anthropic/claude-3-5-sonnet",),
        "openai/gpt-4o-mini": ("anthropic/claude-3-5-haiku",),
        "anthropic/claude-3-5-sonnet": ("openai/gpt-4o",),
        "anthropic/claude-3-5-haiku": ("openai/gpt-4o-mini",),
        "openrouter/meta-llama/llama-3.1-70b-instruct": (
            "together/meta-llama/llama-3.1-8b-instruct",
        ),
        "openrouter/mistralai/mixtral-8x22b-instruct": ("openai/gpt-4o-mini",),
        "together/meta-llama/llama-3.1-8b-instruct": (
            "openrouter/meta-llama/llama-3.1-70b-instruct",
            "openai/gpt-4o-mini",
        ),
        "together/qwen/qwen-2.5-72b-instruct": (
            "openrouter/mistralai/mixtral-8x22b-instruct",
            "openai/gpt-4o",
        ),
    }
)
"""Where a request goes when its model fails before the first token: the models to try next,
in order. A stream that has started cannot move (its first tokens are already sent)."""

# --- settings ----------------------------------------------------------------------------


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """How the demo behaves; `Settings.from_env()` reads the `GATEWAYZ_DEMO_*` variables."""

    seed: int = 0
    """Seeds the providers and the built-in traffic (`GATEWAYZ_DEMO_SEED`)."""
    latency_scale: float = 1.0
    """Multiplies every simulated delay; tests use a small one (`GATEWAYZ_DEMO_LATENCY_SCALE`)."""
    upstream_timeout: float = 5.0
    """Seconds to wait for a provider's answer, or for its next token
    (`GATEWAYZ_DEMO_UPSTREAM_TIMEOUT`)."""
    max_concurrency_per_provider: int = 4
    """Connection slots per provider; requests beyond them wait in the provider's queue."""
    cache_max_bytes: int = 256 * 1024
    health_interval: float = 2.0
    """Seconds between provider health probes (`GATEWAYZ_DEMO_HEALTH_INTERVAL`)."""
    health_window: float = 60.0
    """Seconds of recent results behind the provider error rate and response time."""
    global_rate: float = 200.0
    """Requests per second the whole gateway admits (a token bucket)."""
    global_burst: int = 400
    traffic: bool = False
    """Whether the app drives its own demo traffic (`GATEWAYZ_DEMO_TRAFFIC`)."""
    traffic_concurrency: int = 4
    """Concurrent clients of the built-in traffic (`GATEWAYZ_DEMO_TRAFFIC_CONCURRENCY`)."""
    database: str = ":memory:"
    """SQLite database: `:memory:` or a file path, reseeded at start (`GATEWAYZ_DEMO_DATABASE`)."""
    providers: tuple[ProviderProfile, ...] = DEFAULT_PROVIDERS
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_FALLBACKS)
    """Fallback chains by model id; models missing from `providers` are skipped."""

    def __post_init__(self) -> None:
        positive = {
            "upstream_timeout": self.upstream_timeout,
            "health_interval": self.health_interval,
            "health_window": self.health_window,
            "global_rate": self.global_rate,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.latency_scale) and self.latency_scale >= 0):
            raise ValueError(
                f"latency_scale must be a finite number >= 0, got {self.latency_scale!r}"
            )
        counts = {
            "max_concurrency_per_provider": self.max_concurrency_per_provider,
            "cache_max_bytes": self.cache_max_bytes,
            "global_burst": self.global_burst,
            "traffic_concurrency": self.traffic_concurrency,
        }
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an int >= 1, got {count!r}")
        if not self.database:
            raise ValueError("database must be ':memory:' or a file path, got ''")
        names = [profile.name for profile in self.providers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"providers must be non-empty with distinct names, got {names}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `GATEWAYZ_DEMO_*` variables (defaults for those unset)."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            seed=_env_int(env, "GATEWAYZ_DEMO_SEED", default.seed),
            latency_scale=_env_number(env, "GATEWAYZ_DEMO_LATENCY_SCALE", default.latency_scale),
            upstream_timeout=_env_number(
                env, "GATEWAYZ_DEMO_UPSTREAM_TIMEOUT", default.upstream_timeout
            ),
            health_interval=_env_number(
                env, "GATEWAYZ_DEMO_HEALTH_INTERVAL", default.health_interval
            ),
            traffic=_env_bool(env, "GATEWAYZ_DEMO_TRAFFIC", default.traffic),
            traffic_concurrency=_env_int(
                env, "GATEWAYZ_DEMO_TRAFFIC_CONCURRENCY", default.traffic_concurrency
            ),
            database=env.get("GATEWAYZ_DEMO_DATABASE") or default.database,
        )


# --- the demo's API keys -------------------------------------------------------------------

KeyRole = Literal["regular", "trial", "rate_limited", "no_credits", "revoked", "one_at_a_time"]


@dataclass(frozen=True, slots=True)
class DemoKey:
    """An API key seeded into the database, and what the load generator uses it for."""

    key: str
    owner: str
    role: KeyRole
    plan: str
    credits: float
    active: bool = True
    trial_status: str | None = None
    rate_per_second: float = 20.0
    burst: int = 40
    max_concurrency: int | None = None
    """Requests of this key in flight at once before the gateway refuses more (None: no cap)."""


DEMO_KEYS: tuple[DemoKey, ...] = (
    DemoKey(
        "sk-demo-alice-3f9a7c21e8", "alice", "regular", "pro", 5000.0, trial_status="converted"
    ),
    DemoKey("sk-demo-bob-8d2e4b17c5", "bob", "regular", "team", 8000.0),
    DemoKey(
        "sk-demo-carol-5c1f9e03a7", "carol", "regular", "enterprise", 20000.0, rate_per_second=50.0
    ),
    # Enough trial credits for a few dozen calls: its balance runs out under load, then 402.
    DemoKey(
        "sk-demo-dave-7a4d2c88f1",
        "dave",
        "trial",
        "trial",
        25.0,
        trial_status="active",
        rate_per_second=5.0,
        burst=10,
    ),
    DemoKey("sk-demo-erin-2b6e8f14d9", "erin", "no_credits", "trial", 0.0, trial_status="expired"),
    # Overdrawn (a stream's cost is only known at its end): balances may be negative.
    DemoKey("sk-demo-heidi-6d1a7e32c4", "heidi", "no_credits", "pro", -1.5),
    # Free-tier quotas so small that any steady use hits them: three and six requests a
    # minute, after a burst of one and two.
    DemoKey(
        "sk-demo-frank-9e3c1a57b2",
        "frank",
        "rate_limited",
        "free",
        500.0,
        rate_per_second=0.05,
        burst=1,
    ),
    DemoKey(
        "sk-demo-grace-4f8b2d69e6",
        "grace",
        "rate_limited",
        "free",
        500.0,
        rate_per_second=0.1,
        burst=2,
    ),
    DemoKey("sk-demo-ivan-1c9f5b40a3", "ivan", "revoked", "pro", 100.0, active=False),
    # One request at a time: a client that sends two at once gets 429 for the second.
    DemoKey("sk-demo-judy-8a3f6c02d5", "judy", "one_at_a_time", "free", 5000.0, max_concurrency=1),
)
"""Demo keys: regular ones, a trial, two with a tiny rate limit, two without credits, one
revoked and one allowed a single request at a time. They look like real keys on purpose: none
of them may appear in /metrics."""

UNKNOWN_KEY = "sk-demo-mallory-0000000000"
"""A well-formed key that is not in the database (401)."""


# --- the database ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key: str
    owner: str
    plan: str
    active: bool
    trial_status: str | None
    rate_per_second: float
    burst: int
    max_concurrency: int | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    plan TEXT NOT NULL,
    active INTEGER NOT NULL,
    trial_status TEXT,
    rate_per_second REAL NOT NULL,
    burst INTEGER NOT NULL,
    max_concurrency INTEGER
);
CREATE TABLE IF NOT EXISTS credit_balances (
    key TEXT PRIMARY KEY REFERENCES api_keys (key),
    balance REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL REFERENCES api_keys (key),
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    credits REAL NOT NULL,
    created_at REAL NOT NULL
);
"""


class Database:
    """The gateway's SQLite database; every query is counted and timed.

    One connection behind a lock: the handlers run on the event loop, but the scrape-time
    callbacks run in the worker thread where `MetricsApp` renders the exposition. The
    queries take microseconds on this tiny database, so running them on the loop is fine.
    """

    def __init__(self, path: str, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Closed when the Database is collected, even if nobody calls close().
        self._finalizer = weakref.finalize(self, self._conn.close)
        self._conn.executescript(_SCHEMA)

    @property
    def open_connections(self) -> int:
        return 1 if self._finalizer.alive else 0

    def close(self) -> None:
        self._finalizer()

    def _run(
        self, table: str, operation: str, sql: str, params: Sequence[object] = ()
    ) -> list[Any]:
        with self._lock, self._metrics.track_database_query(table, operation):
            return self._conn.execute(sql, params).fetchall()

    def seed(self, keys: Sequence[DemoKey]) -> None:
        """Insert (or reset) the demo keys and their balances."""
        for demo in keys:
            self._run(
                "api_keys",
                "insert",
                "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    demo.key,
                    demo.owner,
                    demo.plan,
                    int(demo.active),
                    demo.trial_status,
                    demo.rate_per_second,
                    demo.burst,
                    demo.max_concurrency,
                ),
            )
            self._run(
                "credit_balances",
                "insert",
                "INSERT OR REPLACE INTO credit_balances VALUES (?, ?)",
                (demo.key, demo.credits),
            )

    def find_key(self, key: str) -> KeyRecord | None:
        rows = self._run(
            "api_keys",
            "select",
            "SELECT key, owner, plan, active, trial_status, rate_per_second, burst, "
            "max_concurrency FROM api_keys WHERE key = ?",
            (key,),
        )
        if not rows:
            return None
        key, owner, plan, active, trial_status, rate, burst, cap = rows[0]
        return KeyRecord(
            key,
            owner,
            plan,
            bool(active),
            trial_status,
            float(rate),
            int(burst),
            None if cap is None else int(cap),
        )

    def balance(self, key: str) -> float:
        rows = self._run(
            "credit_balances", "select", "SELECT balance FROM credit_balances WHERE key = ?", (key,)
        )
        return float(rows[0][0]) if rows else 0.0

    def charge(self, key: str, model: str, usage: Usage, credits: float) -> None:
        """Debit a completed call and log it."""
        self._run(
            "credit_balances",
            "update",
            "UPDATE credit_balances SET balance = balance - ? WHERE key = ?",
            (credits, key),
        )
        self._run(
            "usage_events",
            "insert",
            "INSERT INTO usage_events (key, model, input_tokens, output_tokens, credits, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key, model, usage.prompt_tokens, usage.completion_tokens, credits, time.time()),
        )

    # Scrape-time callbacks: the state of the world, read when Prometheus asks.

    def key_counts(self) -> dict[str, int]:
        rows = self._run(
            "api_keys", "select", "SELECT active, COUNT(*) FROM api_keys GROUP BY active"
        )
        counts = {"active": 0, "inactive": 0}
        for active, count in rows:
            counts["active" if active else "inactive"] += int(count)
        return counts

    def trial_counts(self) -> dict[str, int]:
        rows = self._run(
            "api_keys",
            "select",
            "SELECT trial_status, COUNT(*) FROM api_keys "
            "WHERE trial_status IS NOT NULL GROUP BY trial_status",
        )
        return {str(status): int(count) for status, count in rows}

    def subscription_counts(self) -> dict[str, int]:
        rows = self._run(
            "api_keys",
            "select",
            "SELECT plan, COUNT(*) FROM api_keys WHERE active = 1 GROUP BY plan",
        )
        # Every paid plan is reported, zero included, so a plan losing its last subscriber
        # reads 0 instead of vanishing.
        counts = dict.fromkeys(PAID_PLANS, 0)
        counts.update({str(plan): int(n) for plan, n in rows if plan in counts})
        return counts

    def balances(self) -> dict[str, float]:
        # Keyed by API key, like credits_used_total's user_id: the package fingerprints both
        # the same way, so the two can be joined without a key ever reaching Prometheus.
        rows = self._run("credit_balances", "select", "SELECT key, balance FROM credit_balances")
        return {str(key): float(balance) for key, balance in rows}


# --- the response cache ----------------------------------------------------------------------


class ResponseCache:
    """An in-memory LRU of completions keyed by model, messages and max_tokens, bounded in
    bytes (the size of keys and texts; Python's per-object overhead is not counted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[str, Completion] = OrderedDict()

    @staticmethod
    def key(model: str, messages: Sequence[tuple[str, str]], max_tokens: int | None) -> str:
        canonical = json.dumps([model, list(messages), max_tokens], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @staticmethod
    def _cost(key: str, completion: Completion) -> int:
        return len(key) + len(completion.text.encode())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Completion | None:
        completion = self._entries.get(key)
        if completion is not None:
            self._entries.move_to_end(key)
        return completion

    def put(self, key: str, completion: Completion) -> None:
        cost = self._cost(key, completion)
        if cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= self._cost(key, old)
        while self._entries and self.size_bytes + cost > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size_bytes -= self._cost(evicted_key, evicted)
        self._entries[key] = completion
        self.size_bytes += cost


# --- rate limits ---------------------------------------------------------------------------


class TokenBucket:
    """`burst` requests at once, refilled at `rate` per second."""

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def remaining(self) -> int:
        """Whole requests left now (as of the last `take`)."""
        return math.floor(self._tokens)

    def retry_after(self) -> int:
        """Seconds until the next request would be admitted, rounded up."""
        return max(1, math.ceil((1 - self._tokens) / self.rate))


# --- upstream connections and provider health ---------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    available: bool
    error_rate: float
    response_time: float | None
    samples: int


class ProviderStats:
    """The recent results of one provider (calls and probes) within a time window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._results: deque[tuple[float, bool, float, bool]] = deque(maxlen=1000)

    def record(self, ok: bool, seconds: float, *, probe: bool = False) -> None:
        self._results.append((time.monotonic(), ok, seconds, probe))

    def snapshot(self) -> HealthSnapshot:
        horizon = time.monotonic() - self.window
        recent = [result for result in self._results if result[0] >= horizon]
        streak = 0
        for _, ok, _, _ in reversed(recent):
            if ok:
                break
            streak += 1
        failures = sum(1 for _, ok, _, _ in recent if not ok)
        call_times = [seconds for _, ok, seconds, probe in recent if ok and not probe]
        probe_times = [seconds for _, ok, seconds, probe in recent if ok and probe]
        # Calls tell how long users wait; without any, the last good probe is the best guess.
        times = call_times or probe_times[-1:]
        return HealthSnapshot(
            available=streak < UNAVAILABLE_AFTER_FAILURES,
            error_rate=failures / len(recent) if recent else 0.0,
            response_time=sum(times) / len(times) if times else None,
            samples=len(recent),
        )


class Upstream:
    """One provider with its connection slots, its queue and its recent results."""

    def __init__(self, provider: SimulatedProvider, slots: int, window: float) -> None:
        self.provider = provider
        self.name = provider.name
        self.stats = ProviderStats(window)
        self.in_flight = 0
        self.waiting = 0
        self.semaphore = asyncio.Semaphore(slots)

    def call(self) -> UpstreamCall:
        return UpstreamCall(self)


class UpstreamCall:
    """Holds a connection slot for one call and records its result in the provider's stats.

    By default the result is the block's: success, failure, or nothing for a cancelled call
    (the client left; the provider did nothing wrong). A stream's outcome is decided while
    its response is sent, so it says `fail()` or `abandon()` explicitly.
    """

    __slots__ = ("_abandoned", "_failed", "_start", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._start = 0.0
        self._failed = False
        self._abandoned = False

    async def __aenter__(self) -> UpstreamCall:
        upstream = self.upstream
        upstream.waiting += 1
        try:
            await upstream.semaphore.acquire()
        finally:
            upstream.waiting -= 1
        upstream.in_flight += 1
        self._start = time.perf_counter()
        return self

    def fail(self) -> None:
        self._failed = True

    def abandon(self) -> None:
        self._abandoned = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        upstream = self.upstream
        upstream.in_flight -= 1
        upstream.semaphore.release()
        if self._abandoned or isinstance(exc, (asyncio.CancelledError, ClientDisconnect)):
            return
        ok = exc is None and not self._failed
        upstream.stats.record(ok, time.perf_counter() - self._start)


# --- the API --------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The part of OpenAI's chat completion request the demo understands (extra fields,
    which real clients send, are ignored)."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream_options: StreamOptions | None = None


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    404: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    504: "upstream_timeout",
}


def _error(
    status: int, message: str, code: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error in OpenAI's shape."""
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _RefusalError(Exception):
    """A request refused before reaching a provider; carries the response to send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


_SSE_DONE = "data: [DONE]\n\n"


@dataclass(slots=True)
class _Call:
    """One chat completion on its way through the gateway."""

    key: KeyRecord
    body: ChatRequest
    model: ModelInfo
    cache_key: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompts(self) -> list[str]:
        return [message.content for message in self.body.messages]

    def chunk(self, delta: Mapping[str, str], finish_reason: str | None = None) -> str:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model.id,
                "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish_reason}],
            }
        )

    def usage_chunk(self, usage: Usage) -> str:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model.id,
                "choices": [],
                "usage": _usage(usage),
            }
        )

    def completion(self, completion: Completion) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model.id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(completion.usage),
        }

    @property
    def include_usage(self) -> bool:
        options = self.body.stream_options
        return options is not None and options.include_usage


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class _KeySlot:
    """One of a key's concurrent request slots; released once, by the request or its stream."""

    __slots__ = ("_counts", "_key", "handed_over", "released")

    def __init__(self, counts: dict[str, int], key: str) -> None:
        self._counts = counts
        self._key = key
        self.handed_over = False
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._counts[self._key] -= 1


@dataclass(slots=True)
class _Stream:
    """A streamed call whose inference block stays open while its response is sent."""

    call: _Call
    inference: InferenceHandle
    upstream: UpstreamCall
    finished: bool = False
    """Whether the provider's part is over (success or failure): anything after is the
    client's business."""


class _InferenceStreamResponse(StreamingResponse):
    """A `StreamingResponse` that closes the call's context (connection slot, inference
    block, provider stream) when the response ends, however it ends.

    The context was opened in the route, to fetch the first token before answering (so a
    provider that fails at once gets a proper 502 / 504, not a 200 with an error event).
    Closing it here, rather than in the body generator, also covers a client that leaves
    before the body starts, when the generator never runs at all.
    """

    def __init__(
        self,
        events: AsyncGenerator[str, None],
        *,
        stream: _Stream,
        context: AsyncExitStack,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._stream = stream
        self._context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._context:
            try:
                await super().__call__(scope, receive, send)
            finally:
                if not self._stream.finished:
                    # The client went away mid-stream. Starlette may swallow that
                    # cancellation (it then returns normally), so say it explicitly.
                    self._stream.inference.set_status("cancelled")
                    self._stream.upstream.abandon()
                await self._events.aclose()


class Gateway:
    """The gateway's state and request handling, independent of the web framework."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.db = Database(settings.database, metrics)
        self.db.seed(DEMO_KEYS)
        self.cache = ResponseCache(settings.cache_max_bytes)
        self.catalog = model_catalog(settings.providers)
        self.upstreams = {
            profile.name: Upstream(
                SimulatedProvider(
                    profile, seed=settings.seed, latency_scale=settings.latency_scale
                ),
                settings.max_concurrency_per_provider,
                settings.health_window,
            )
            for profile in settings.providers
        }
        # Each model's chain: itself, then its fallbacks that this gateway serves.
        self.chains = {
            model_id: (
                model,
                *(
                    self.catalog[f]
                    for f in settings.fallbacks.get(model_id, ())
                    if f in self.catalog
                ),
            )
            for model_id, model in self.catalog.items()
        }
        now = time.monotonic()
        self.global_bucket = TokenBucket(settings.global_rate, settings.global_burst, now)
        self.key_buckets: dict[str, TokenBucket] = {}
        self.in_flight_by_key: dict[str, int] = {}
        # What providers charge us, so every call's usage is priced (provider_cost_total);
        # a model without a known cost counts in inference_unpriced_total.
        metrics.set_pricing(
            {
                (model.provider, model.id): ModelPrice(*model.cost)
                for model in self.catalog.values()
                if model.cost is not None
            }
        )
        metrics.set_cache_size(CACHE_NAME, 0)
        metrics.set_rate_limit_remaining("global", self.global_bucket.remaining())
        self._register_callbacks()

    def close(self) -> None:
        self.db.close()

    # --- scrape-time gauges ----------------------------------------------------------

    def _register_callbacks(self) -> None:
        metrics = self.metrics
        metrics.register_gauge_callback("active_api_keys", self.db.key_counts)
        metrics.register_gauge_callback("trial_active", self.db.trial_counts)
        metrics.register_gauge_callback("subscription_count", self.db.subscription_counts)
        metrics.register_gauge_callback("user_credit_balance", self.db.balances)
        metrics.register_gauge_callback("active_connections", self.connection_counts)
        metrics.register_gauge_callback("queue_size", self.queue_sizes)

    def connection_counts(self) -> dict[str, int]:
        """Open connections: database, and provider calls holding a slot."""
        in_flight = sum(upstream.in_flight for upstream in self.upstreams.values())
        return {"db": self.db.open_connections, "provider": in_flight}

    def queue_sizes(self) -> dict[str, int]:
        """Requests waiting for a connection slot, per provider."""
        return {f"upstream:{name}": up.waiting for name, up in self.upstreams.items()}

    # --- provider health -------------------------------------------------------------

    async def _probe(self, upstream: Upstream) -> None:
        began = time.perf_counter()
        try:
            await asyncio.wait_for(upstream.provider.probe(), self.settings.upstream_timeout)
        except (ProviderError, asyncio.TimeoutError):
            upstream.stats.record(False, time.perf_counter() - began, probe=True)
        else:
            upstream.stats.record(True, time.perf_counter() - began, probe=True)

    async def check_provider_health(self) -> dict[str, HealthSnapshot]:
        """Probe every provider, then publish what its recent results say."""
        upstreams = list(self.upstreams.values())
        await asyncio.gather(*(self._probe(upstream) for upstream in upstreams))
        snapshots = {}
        for upstream in upstreams:
            snapshot = upstream.stats.snapshot()
            self.metrics.set_provider_health(
                upstream.name,
                available=snapshot.available,
                error_rate=snapshot.error_rate,
                response_time=snapshot.response_time,
            )
            snapshots[upstream.name] = snapshot
        return snapshots

    async def monitor_providers(self) -> None:
        """`check_provider_health` every `health_interval` seconds, until cancelled."""
        while True:
            try:
                await self.check_provider_health()
            except Exception:
                # A bug in the monitor must not stop it, nor take the gateway down.
                logger.exception("provider health check failed")
            await asyncio.sleep(self.settings.health_interval)

    def health(self) -> dict[str, Any]:
        providers = {}
        for name, upstream in self.upstreams.items():
            snapshot = upstream.stats.snapshot()
            providers[name] = {
                "available": snapshot.available,
                "error_rate": round(snapshot.error_rate, 4),
                "response_time_seconds": snapshot.response_time,
                "in_flight": upstream.in_flight,
                "waiting": upstream.waiting,
            }
        return {"status": "ok", "providers": providers}

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model.id,
                    "object": "model",
                    "owned_by": model.provider,
                    "pricing": {"input": model.input_price, "output": model.output_price},
                }
                for model in self.catalog.values()
            ],
        }

    # --- admission: key, limits, body, model, credits ----------------------------------

    def _authenticate(self, authorization: str) -> KeyRecord:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.metrics.record_api_key_usage("anonymous", "missing")
            raise _RefusalError(
                _error(
                    401,
                    "missing API key: send 'Authorization: Bearer sk-...'",
                    "missing_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
            )
        record = self.db.find_key(token)
        if record is None:
            # A key we do not know is arbitrary client input: it is counted under one fixed
            # id, never as itself (not even fingerprinted: that would be one series each).
            self.metrics.record_api_key_usage("unknown", "invalid")
            raise _RefusalError(_error(401, "invalid API key", "invalid_api_key"))
        if not record.active:
            self.metrics.record_api_key_usage(record.key, "inactive")
            raise _RefusalError(_error(401, "this API key was revoked", "api_key_revoked"))
        return record

    def _limit(self, key: KeyRecord) -> dict[str, str]:
        now = time.monotonic()
        admitted = self.global_bucket.take(now)
        self.metrics.set_rate_limit_remaining("global", self.global_bucket.remaining())
        if not admitted:
            self._refuse_rate_limited(key, "global", self.global_bucket)
        bucket = self.key_buckets.get(key.key)
        if bucket is None:
            bucket = self.key_buckets[key.key] = TokenBucket(key.rate_per_second, key.burst, now)
        admitted = bucket.take(now)
        # One gauge for every key (the label is the limit type, not the key): the headroom of
        # the key that asked last, like the X-RateLimit-Remaining header it gets back.
        self.metrics.set_rate_limit_remaining("api_key", bucket.remaining())
        if not admitted:
            self._refuse_rate_limited(key, "api_key", bucket)
        return {
            "x-ratelimit-limit-requests": str(bucket.burst),
            "x-ratelimit-remaining-requests": str(bucket.remaining()),
        }

    def _refuse_rate_limited(self, key: KeyRecord, limit_type: str, bucket: TokenBucket) -> None:
        self.metrics.record_rate_limited(limit_type)
        # Who refused: the gateway itself, by scope and kind (never a provider's 429).
        self.metrics.record_gateway_rejection("global" if limit_type == "global" else "key", "rpm")
        self.metrics.record_api_key_usage(key.key, "rate_limited")
        raise _RefusalError(
            _error(
                429,
                f"rate limit exceeded ({limit_type})",
                "rate_limit_exceeded",
                headers={"retry-after": str(bucket.retry_after())},
            )
        )

    def _parse(self, raw: bytes, key: KeyRecord) -> ChatRequest:
        try:
            return ChatRequest.model_validate_json(raw)
        except ValidationError as exc:
            self.metrics.record_api_key_usage(key.key, "bad_request")
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = f"invalid request: {where}: {first['msg']}" if where else first["msg"]
            raise _RefusalError(_error(400, message, "invalid_request")) from None

    def _model(self, body: ChatRequest, key: KeyRecord) -> ModelInfo:
        model = self.catalog.get(body.model)
        if model is None:
            self.metrics.record_api_key_usage(key.key, "model_not_found")
            raise _RefusalError(
                _error(404, f"model {body.model!r} does not exist", "model_not_found")
            )
        return model

    def _check_credits(self, key: KeyRecord) -> None:
        if self.db.balance(key.key) <= 0:
            self.metrics.record_gateway_rejection("user", "credits")
            self.metrics.record_api_key_usage(key.key, "insufficient_credits")
            raise _RefusalError(
                _error(402, "insufficient credits: top up to continue", "insufficient_credits")
            )

    def _hold(self, key: KeyRecord) -> _KeySlot:
        """Take one of the key's concurrent request slots, or refuse (429)."""
        in_flight = self.in_flight_by_key.get(key.key, 0)
        if key.max_concurrency is not None and in_flight >= key.max_concurrency:
            self.metrics.record_rate_limited("concurrency")
            self.metrics.record_gateway_rejection("key", "concurrency")
            self.metrics.record_api_key_usage(key.key, "rate_limited")
            raise _RefusalError(
                _error(
                    429,
                    f"too many concurrent requests (at most {key.max_concurrency} at a time)",
                    "concurrency_limit_exceeded",
                )
            )
        self.in_flight_by_key[key.key] = in_flight + 1
        return _KeySlot(self.in_flight_by_key, key.key)

    # --- completion ------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        try:
            key = self._authenticate(request.headers.get("authorization", ""))
            headers = self._limit(key)
            body = self._parse(await request.body(), key)
            model = self._model(body, key)
            self._check_credits(key)
            slot = self._hold(key)
        except _RefusalError as refusal:
            return refusal.response
        try:
            messages = [(message.role, message.content) for message in body.messages]
            call = _Call(key, body, model, ResponseCache.key(model.id, messages, body.max_tokens))
            cached = self.cache.get(call.cache_key)
            if cached is not None:
                self.metrics.record_cache_hit(CACHE_NAME)
                self.metrics.record_api_key_usage(key.key, "success")
                return self._cached(call, cached, {**headers, "x-gatewayz-cache": "hit"})
            self.metrics.record_cache_miss(CACHE_NAME)
            headers["x-gatewayz-cache"] = "miss"
            if body.stream:
                return await self._stream(call, headers, slot)
            return await self._complete(call, headers)
        finally:
            if not slot.handed_over:
                slot.release()

    def _failed_attempt(self, model: ModelInfo, exc: BaseException) -> str:
        """Record what a failed attempt tells, and the reason to fall back for it."""
        if isinstance(exc, ProviderRateLimitedError):
            # The provider's own limit: per provider, apart from the gateway's rejections.
            self.metrics.record_upstream_rate_limited(model.provider, model.id)
            return "rate_limited"
        if isinstance(exc, asyncio.TimeoutError):
            return "timeout"
        return "error"

    def _upstream_failed(self, call: _Call, exc: BaseException) -> Response:
        if isinstance(exc, ProviderRateLimitedError):
            self.metrics.record_api_key_usage(call.key.key, "upstream_rate_limited")
            return _error(
                429, f"{call.model.provider} is rate limiting us", "upstream_rate_limited"
            )
        if isinstance(exc, asyncio.TimeoutError):
            self.metrics.record_api_key_usage(call.key.key, "upstream_timeout")
            return _error(504, f"{call.model.provider} did not answer in time", "upstream_timeout")
        self.metrics.record_api_key_usage(call.key.key, "upstream_error")
        return _error(502, f"upstream error: {exc}", "upstream_error")

    def _settle(self, call: _Call, completion: Completion) -> None:
        """Bill a successful call and keep its answer."""
        model, usage = call.model, completion.usage
        credits = model.credits(usage.prompt_tokens, usage.completion_tokens)
        self.db.charge(call.key.key, model.id, usage, credits)
        # user_id=api_key as in the wiki's example: safe, the package fingerprints keys.
        self.metrics.record_credits_used(model.provider, model.id, call.key.key, credits)
        self.metrics.record_api_key_usage(call.key.key, "success")
        self.cache.put(call.cache_key, completion)
        self.metrics.set_cache_size(CACHE_NAME, self.cache.size_bytes)

    async def _complete(self, call: _Call, headers: dict[str, str]) -> Response:
        requested, attempts, reason = call.model, 0, ""
        failure: BaseException | None = None
        try:
            for model in self.chains[requested.id]:
                if failure is not None:
                    self.metrics.record_fallback(call.model.id, model.id, reason)
                call.model = model
                attempts += 1
                upstream = self.upstreams[model.provider]
                try:
                    async with upstream.call():
                        with self.metrics.track_model_inference(
                            model.provider, model.id, attempt=attempts
                        ) as inference:
                            completion = await asyncio.wait_for(
                                upstream.provider.complete(
                                    call.prompts, max_tokens=call.body.max_tokens
                                ),
                                self.settings.upstream_timeout,
                            )
                            inference.set_usage(
                                input_tokens=completion.usage.prompt_tokens,
                                output_tokens=completion.usage.completion_tokens,
                            )
                except (ProviderError, asyncio.TimeoutError) as exc:
                    failure, reason = exc, self._failed_attempt(model, exc)
                    continue
                self._settle(call, completion)
                return JSONResponse(call.completion(completion), headers=headers)
        finally:
            if attempts:
                self.metrics.record_request_attempts(requested.id, attempts)
        assert failure is not None  # every model of the chain failed
        return self._upstream_failed(call, failure)

    async def _stream(self, call: _Call, headers: dict[str, str], key_slot: _KeySlot) -> Response:
        requested, attempts, reason = call.model, 0, ""
        failure: BaseException | None = None
        try:
            for model in self.chains[requested.id]:
                if failure is not None:
                    self.metrics.record_fallback(call.model.id, model.id, reason)
                call.model = model
                attempts += 1
                try:
                    slot, inference, first, chunks, owned = await self._open_stream(
                        call, model, attempts
                    )
                except (ProviderError, asyncio.TimeoutError) as exc:
                    failure, reason = exc, self._failed_attempt(model, exc)
                    continue
                break
            else:
                assert failure is not None
                return self._upstream_failed(call, failure)
        finally:
            if attempts:
                self.metrics.record_request_attempts(requested.id, attempts)
        # The key's concurrency slot is held until the stream ends, like the connection slot.
        owned.callback(key_slot.release)
        key_slot.handed_over = True
        stream = _Stream(call, inference, slot)
        return _InferenceStreamResponse(
            self._events(stream, first, chunks), stream=stream, context=owned, headers=headers
        )

    async def _open_stream(
        self, call: _Call, model: ModelInfo, attempt: int
    ) -> tuple[UpstreamCall, InferenceHandle, Chunk, AsyncGenerator[Chunk, None], AsyncExitStack]:
        """One streamed attempt up to its first chunk; the returned context owns the rest."""
        upstream = self.upstreams[model.provider]
        async with AsyncExitStack() as context:
            slot = await context.enter_async_context(upstream.call())
            inference = context.enter_context(
                self.metrics.track_model_inference(model.provider, model.id, attempt=attempt)
            )
            chunks = upstream.provider.stream(call.prompts, max_tokens=call.body.max_tokens)
            context.push_async_callback(chunks.aclose)
            try:
                first = await asyncio.wait_for(anext(chunks), self.settings.upstream_timeout)
            except StopAsyncIteration:
                raise ProviderError(f"{model.provider} closed the stream at once") from None
            if first.text:
                inference.first_token()
            # From here on the response owns the context (see _InferenceStreamResponse).
            return slot, inference, first, chunks, context.pop_all()

    async def _events(
        self, stream: _Stream, first: Chunk, chunks: AsyncGenerator[Chunk, None]
    ) -> AsyncGenerator[str, None]:
        """The SSE body: OpenAI's `chat.completion.chunk` events, then `[DONE]`."""
        call, inference = stream.call, stream.inference
        parts = [first.text]
        usage = first.usage
        yield call.chunk({"role": "assistant", "content": first.text})
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), self.settings.upstream_timeout)
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    usage = chunk.usage
                elif chunk.text:
                    inference.first_token()  # a no-op unless the first chunk had no text
                    parts.append(chunk.text)
                    yield call.chunk({"content": chunk.text})
        except (ProviderError, asyncio.TimeoutError) as exc:
            # The status line is gone: the failure can only be told in the stream (as
            # OpenAI does), and to the metrics explicitly, since nothing escapes the block.
            stream.finished = True
            timed_out = isinstance(exc, asyncio.TimeoutError)
            inference.set_status("timeout" if timed_out else "error")
            stream.upstream.fail()
            self.metrics.record_api_key_usage(
                call.key.key, "upstream_timeout" if timed_out else "upstream_error"
            )
            code = "upstream_timeout" if timed_out else "upstream_error"
            message = "the provider stopped answering" if timed_out else str(exc)
            yield _sse({"error": {"message": message, "type": code, "code": code}})
            return
        stream.finished = True
        text = "".join(parts)
        if usage is None:  # a provider that reports no usage: count what was seen
            usage = Usage(estimate_tokens(call.prompts), len(parts))
        inference.set_usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
        self._settle(call, Completion(text, usage))
        yield call.chunk({}, finish_reason="stop")
        if call.include_usage:
            yield call.usage_chunk(usage)
        yield _SSE_DONE

    def _cached(self, call: _Call, completion: Completion, headers: dict[str, str]) -> Response:
        if not call.body.stream:
            return JSONResponse(call.completion(completion), headers=headers)

        async def replay() -> AsyncIterator[str]:
            words = completion.text.split(" ")
            yield call.chunk({"role": "assistant", "content": words[0]})
            for word in words[1:]:
                yield call.chunk({"content": " " + word})
            yield call.chunk({}, finish_reason="stop")
            if call.include_usage:
                yield call.usage_chunk(completion.usage)
            yield _SSE_DONE

        return StreamingResponse(replay(), media_type="text/event-stream", headers=headers)


# --- the application --------------------------------------------------------------------------


async def run_builtin_traffic(app: FastAPI, settings: Settings) -> None:
    """Drive the demo's own traffic through the whole ASGI stack, in process, until cancelled."""
    # Imported here: only the built-in traffic needs httpx, and load.py imports this module
    # (for the demo keys).
    import httpx

    from examples.gateway.load import drive

    # In process (no socket): the requests still go through the middleware and every route,
    # and the demo needs no port of its own to talk to.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    scale = settings.latency_scale
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.internal", timeout=None
    ) as client:
        await drive(
            client,
            duration=None,
            concurrency=settings.traffic_concurrency,
            seed=settings.seed,
            think_time=(0.05 * scale, 0.5 * scale),
        )


def create_app(
    *, registry: CollectorRegistry | None = None, settings: Settings | None = None
) -> FastAPI:
    """The demo gateway. Its metrics live in `registry` (prometheus_client's default registry
    when None), served at /metrics by the middleware."""
    settings = Settings() if settings is None else settings
    gateway = Gateway(settings, GatewayMetrics(registry=registry))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(gateway.monitor_providers(), name="provider-health")]
        if settings.traffic:
            tasks.append(
                asyncio.create_task(run_builtin_traffic(app, settings), name="demo-traffic")
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="Gatewayz demo gateway", lifespan=lifespan)
    app.state.gateway = gateway
    app.add_middleware(PrometheusMiddleware, registry=registry)
    if tracing_wanted():
        # Outside the metrics middleware: latency and TTFT observations carry the trace ids
        # of these spans as exemplars (OpenMetrics scrapes only). See tracing.py.
        enable_tracing(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gateway.chat_completions(request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return gateway.models()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return gateway.health()

    return app


_app: FastAPI | None = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> FastAPI:
    # `examples.gateway.app:app` (uvicorn, Docker Compose) is built on first access, not at
    # import: importing this module registers nothing in prometheus_client's default
    # registry, so tests can import `create_app` and use registries of their own.
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _app_lock:
        if _app is None:
            _app = create_app(settings=Settings.from_env())
        return _app
