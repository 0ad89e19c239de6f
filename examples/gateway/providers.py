"""Simulated upstream LLM providers for the demo gateway.

Each provider has a latency (the network round trip), a time to first token, a generation
speed, an error rate, a timeout rate and outage windows. Every delay is an `asyncio.sleep`
(no network), and every random choice comes from a `random.Random` seeded per provider, so a
test that sends the same requests in the same order sees the same outcomes.

A provider that "times out" simply stops answering, as a real one does: detecting the
timeout is the caller's job (`asyncio.wait_for`), exactly as with a real HTTP client.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# How long a hung provider stays silent: far longer than any upstream timeout, so the caller's
# timeout always fires first.
HANG_SECONDS = 3600.0

# The simulated models' vocabulary: one word per token.
_TEXT = (
    "the gateway routes each request to a provider and streams tokens back while metrics "
    "record latency cost and errors so operators can see which model is slow which provider "
    "fails and how many credits each key spends every minute of the day"
)
_WORDS: tuple[str, ...] = tuple(_TEXT.split())


class ProviderError(Exception):
    """The provider answered with an error (an upstream 5xx)."""


class ProviderUnavailableError(ProviderError):
    """The provider could not be reached (an outage window)."""


class ProviderRateLimitedError(ProviderError):
    """The provider refused the call with its own rate limit (an upstream 429)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model a provider serves, with its price to users in credits per 1,000 tokens and
    what the provider charges the gateway in USD per million tokens (None: unknown)."""

    id: str
    input_price: float
    output_price: float
    cost: tuple[float, float] | None = None
    """(input, output) USD per million tokens that the provider bills the gateway."""

    @property
    def provider(self) -> str:
        """The provider part of the id: `openai` for `openai/gpt-4o`."""
        return self.id.split("/", 1)[0]

    def credits(self, input_tokens: int, output_tokens: int) -> float:
        """What a call with this usage costs."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1000


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """The provider is unreachable from `start` for `duration` seconds after it was created,
    and again every `every` seconds if that is set."""

    start: float
    duration: float
    every: float | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or self.duration <= 0:
            raise ValueError(f"an outage needs start >= 0 and duration > 0, got {self!r}")
        if self.every is not None and self.every <= self.duration:
            raise ValueError(f"an outage's period must exceed its duration, got {self!r}")

    def covers(self, elapsed: float) -> bool:
        """Whether the provider is down `elapsed` seconds after it was created."""
        if elapsed < self.start:
            return False
        offset = elapsed - self.start
        if self.every is not None:
            offset %= self.every
        return offset < self.duration


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """How one simulated provider behaves."""

    name: str
    models: tuple[ModelInfo, ...]
    latency: float = 0.05
    """Network round trip (seconds), paid by every call and health probe."""
    time_to_first_token: float = 0.4
    """Median time the model takes before its first token (seconds)."""
    tokens_per_second: float = 80.0
    """Median generation speed after the first token."""
    jitter: float = 0.35
    """Sigma of the log-normal factor applied to each delay: a long tail, like real ones."""
    error_rate: float = 0.02
    """Share of calls that fail with an upstream error."""
    timeout_rate: float = 0.01
    """Share of calls where the provider stops answering."""
    rate_limit_rate: float = 0.0
    """Share of calls the provider refuses at once with its own 429 (its quota for us)."""
    output_tokens: tuple[int, int] = (16, 120)
    """Range of the number of tokens generated when the request sets no `max_tokens`."""
    outages: tuple[OutageWindow, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"a provider name must be non-empty without '/', got {self.name!r}")
        for model in self.models:
            if model.provider != self.name:
                raise ValueError(f"model {model.id!r} does not belong to provider {self.name!r}")
        for field in ("latency", "time_to_first_token", "jitter"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)!r}")
        if self.tokens_per_second <= 0:
            raise ValueError(f"tokens_per_second must be > 0, got {self.tokens_per_second!r}")
        rates = (self.error_rate, self.timeout_rate, self.rate_limit_rate)
        if not all(0 <= rate <= 1 for rate in rates):
            raise ValueError(
                f"error_rate, timeout_rate and rate_limit_rate must be in [0, 1], got {rates!r}"
            )
        if sum(rates) > 1:
            raise ValueError("error_rate + timeout_rate + rate_limit_rate must not exceed 1")
        low, high = self.output_tokens
        if not 1 <= low <= high:
            raise ValueError(f"output_tokens must be (low, high) with 1 <= low <= high, got {low}")


DEFAULT_PROVIDERS: tuple[ProviderProfile, ...] = (
    ProviderProfile(
        "openai",
        (
            ModelInfo("openai/gpt-4o", 2.5, 10.0, cost=(2.0, 8.0)),
            ModelInfo("openai/gpt-4o-mini", 0.15, 0.6, cost=(0.12, 0.48)),
        ),
        latency=0.04,
        time_to_first_token=0.35,
        tokens_per_second=90.0,
        error_rate=0.01,
        timeout_rate=0.005,
    ),
    ProviderProfile(
        "anthropic",
        (
            ModelInfo("anthropic/claude-3-5-sonnet", 3.0, 15.0, cost=(2.7, 13.5)),
            ModelInfo("anthropic/claude-3-5-haiku", 0.8, 4.0, cost=(0.6, 3.0)),
        ),
        latency=0.05,
        time_to_first_token=0.6,
        tokens_per_second=60.0,
        error_rate=0.02,
        timeout_rate=0.01,
    ),
    ProviderProfile(
        "openrouter",
        (
            ModelInfo("openrouter/meta-llama/llama-3.1-70b-instruct", 0.52, 0.75, cost=(0.4, 0.6)),
            # No known cost: its calls count in inference_unpriced_total.
            ModelInfo("openrouter/mistralai/mixtral-8x22b-instruct", 0.9, 0.9),
        ),
        latency=0.08,
        time_to_first_token=0.5,
        tokens_per_second=70.0,
        error_rate=0.05,
        timeout_rate=0.01,
        # An aggregator whose quota for the gateway is tight: one call in ten gets its 429.
        rate_limit_rate=0.1,
    ),
    ProviderProfile(
        "together",
        (
            ModelInfo("together/meta-llama/llama-3.1-8b-instruct", 0.18, 0.18, cost=(0.18, 0.18)),
            # Costs more than it bills: the margin panel shows a loss-making model.
            ModelInfo("together/qwen/qwen-2.5-72b-instruct", 1.2, 1.2, cost=(1.5, 1.5)),
        ),
        latency=0.03,
        time_to_first_token=0.25,
        tokens_per_second=140.0,
        error_rate=0.03,
        timeout_rate=0.02,
        # Down 20 s of every minute from 10 s after start: a newcomer's dashboard shows an
        # outage (availability 0, a burst of 502s, the error ratio climbing) within a minute.
        outages=(OutageWindow(start=10.0, duration=20.0, every=60.0),),
    ),
)
"""The demo's providers: four of them, one with a recurring outage, one that answers some
calls with its own 429, and one model without a known cost."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed piece: a token of text, or (last) the usage of the whole call."""

    text: str = ""
    usage: Usage | None = None


def estimate_tokens(texts: Sequence[str]) -> int:
    """Prompt tokens by the usual rule of thumb: about four characters per token, plus a few
    tokens of framing per message."""
    return sum(4 + max(1, math.ceil(len(text) / 4)) for text in texts)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything random about one call, drawn at its start so the order of calls (not the
    timing of the event loop) decides the outcome."""

    outcome: Literal["ok", "error", "timeout", "unavailable", "rate_limited"]
    first_token_delay: float
    token_delay: float
    words: tuple[str, ...]
    fail_at: int
    """For errors and timeouts of a stream: how many tokens arrive before it fails."""


class SimulatedProvider:
    """One upstream provider, driven by its `ProviderProfile`."""

    def __init__(
        self,
        profile: ProviderProfile,
        *,
        seed: int = 0,
        latency_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if latency_scale < 0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale!r}")
        self.profile = profile
        self.name = profile.name
        self._scale = latency_scale
        self._clock = clock
        self._started = clock()
        # String seeds hash deterministically (unlike hash()), one stream per provider; probes
        # draw from their own stream so that health checks never shift request outcomes.
        self._rng = random.Random(f"{seed}:{profile.name}")
        self._probe_rng = random.Random(f"{seed}:{profile.name}:probe")

    def in_outage(self) -> bool:
        """Whether the provider is inside one of its outage windows now."""
        elapsed = self._clock() - self._started
        return any(window.covers(elapsed) for window in self.profile.outages)

    def _delay(self, rng: random.Random, median: float) -> float:
        if median <= 0:
            return 0.0
        return median * rng.lognormvariate(0.0, self.profile.jitter) * self._scale

    def _plan(self, prompt_tokens: int, max_tokens: int | None) -> _Plan:
        profile, rng = self.profile, self._rng
        roll = rng.random()
        low, high = profile.output_tokens
        count = rng.randint(low, high)
        if max_tokens is not None:
            count = max(1, min(count, max_tokens))
        start = rng.randrange(len(_WORDS))
        words = tuple(_WORDS[(start + i) % len(_WORDS)] for i in range(count))
        first = self._delay(rng, profile.latency + profile.time_to_first_token)
        per_token = self._delay(rng, 1.0 / profile.tokens_per_second)
        fail_at = rng.randrange(count)
        if self.in_outage():
            outcome: Literal["ok", "error", "timeout", "unavailable", "rate_limited"] = (
                "unavailable"
            )
        elif roll < profile.error_rate:
            outcome = "error"
        elif roll < profile.error_rate + profile.timeout_rate:
            outcome = "timeout"
        elif roll < profile.error_rate + profile.timeout_rate + profile.rate_limit_rate:
            outcome = "rate_limited"
        else:
            outcome = "ok"
        return _Plan(outcome, first, per_token, words, fail_at)

    async def _fail(self, plan: _Plan) -> None:
        if plan.outcome == "timeout":
            await asyncio.sleep(HANG_SECONDS)
        raise ProviderError(f"{self.name}: upstream returned 500 Internal Server Error")

    async def _unreachable(self) -> None:
        # Refused connections fail fast: one round trip, no generation.
        await asyncio.sleep(self._delay(self._rng, self.profile.latency))
        raise ProviderUnavailableError(f"{self.name}: connection refused (outage)")

    async def _refuse(self) -> None:
        # A 429 is fast too: the provider's front door answers before any model runs.
        await asyncio.sleep(self._delay(self._rng, self.profile.latency))
        raise ProviderRateLimitedError(f"{self.name}: upstream returned 429 Too Many Requests")

    async def _before_first_token(self, plan: _Plan) -> None:
        if plan.outcome == "unavailable":
            await self._unreachable()
        if plan.outcome == "rate_limited":
            await self._refuse()
        await asyncio.sleep(plan.first_token_delay)

    async def probe(self) -> float:
        """A health check (`GET /models` upstream): its duration, or `ProviderUnavailableError`."""
        began = time.perf_counter()
        await asyncio.sleep(self._delay(self._probe_rng, self.profile.latency))
        if self.in_outage():
            raise ProviderUnavailableError(f"{self.name}: connection refused (outage)")
        return time.perf_counter() - began

    async def complete(
        self, messages: Sequence[str], *, max_tokens: int | None = None
    ) -> Completion:
        """A whole completion at once, after the time the model takes to generate it."""
        prompt_tokens = estimate_tokens(messages)
        plan = self._plan(prompt_tokens, max_tokens)
        await self._before_first_token(plan)
        if plan.outcome != "ok":
            await self._fail(plan)
        await asyncio.sleep(plan.token_delay * (len(plan.words) - 1))
        return Completion(" ".join(plan.words), Usage(prompt_tokens, len(plan.words)))

    async def stream(
        self, messages: Sequence[str], *, max_tokens: int | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """Tokens as they are generated, then one `Chunk` carrying the usage.

        A failing stream fails after `fail_at` tokens (before the first one, or midway).
        """
        prompt_tokens = estimate_tokens(messages)
        plan = self._plan(prompt_tokens, max_tokens)
        await self._before_first_token(plan)
        for index, word in enumerate(plan.words):
            if plan.outcome != "ok" and index == plan.fail_at:
                await self._fail(plan)
            if index:
                await asyncio.sleep(plan.token_delay)
            yield Chunk(text=word if index == 0 else " " + word)
        yield Chunk(usage=Usage(prompt_tokens, len(plan.words)))


def model_catalog(profiles: Sequence[ProviderProfile]) -> dict[str, ModelInfo]:
    """Every model of `profiles` by id."""
    return {model.id: model for profile in profiles for model in profile.models}
