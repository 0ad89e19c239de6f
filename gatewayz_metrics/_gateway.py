"""Gateway-native families: fallbacks and attempts, who refused a request, provider cost.

The questions an AI-gateway operator asks in an incident or a pricing review, which the
source document's families do not answer: which requests fell back to another model and
why, how many upstream attempts a request takes, whether the gateway itself or the
provider refused a request, and what a model costs next to the credits billed for it.

`GatewayFamilies` is built with the other domain families of a registry (`_domain._Families`)
and registered with them; `GatewayMetrics` exposes its recording methods. Every value goes
through the package's checks (`_validation.count`, `.number`, `_Label.clean`), so one validation
rule governs every helper.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import Counter, Histogram

from gatewayz_metrics._cardinality import BoundedLabel
from gatewayz_metrics._domain import _ChildCache, _Label, _resolve
from gatewayz_metrics._labels import clean_label
from gatewayz_metrics._validation import InvalidValueError
from gatewayz_metrics._validation import count as _count
from gatewayz_metrics._validation import number as _number

if TYPE_CHECKING:
    from gatewayz_metrics._domain import _Families

M = TypeVar("M", Counter, Histogram)

FALLBACK_REASONS: tuple[str, ...] = (
    "error",
    "timeout",
    "rate_limited",
    "context_window",
    "content_policy",
    "other",
)
"""The values of `model_fallbacks_total{reason}`: why a request moved to another model."""

REJECTION_SCOPES: tuple[str, ...] = ("key", "user", "org", "global")
"""The values of `gateway_rejections_total{scope}`: whose limit refused the request."""

REJECTION_KINDS: tuple[str, ...] = ("rpm", "tpm", "credits", "concurrency")
"""The values of `gateway_rejections_total{kind}`: which limit refused the request."""

REQUEST_ATTEMPTS_BUCKETS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
"""Buckets of `gateway_request_attempts`: one per attempt count; `le="1"` is "first try"."""

MAX_CURRENCIES = 10
"""Distinct `currency` values of `provider_cost_total` before folding into `__other__`."""

_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What a provider charges for a model, per million tokens, in `currency` (ISO 4217)."""

    input_per_million: float
    output_per_million: float
    currency: str = "USD"

    def __post_init__(self) -> None:
        _number("input_per_million", self.input_per_million)
        _number("output_per_million", self.output_per_million)
        _currency(self.currency)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The price of a call with this usage."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1_000_000


Pricing = Mapping[tuple[str, str], ModelPrice]
"""`{(provider, model): ModelPrice}`: what `set_pricing` takes."""


def _currency(value: object) -> str:
    text = clean_label("currency", value, required=True)
    if not _CURRENCY.fullmatch(text):
        raise InvalidValueError(
            "currency", f"currency must be an ISO 4217 code such as 'USD', got {text!r}"
        )
    return text


def _choice(argument: str, value: object, allowed: Sequence[str]) -> str:
    text = clean_label(argument, value, required=True)
    if text not in allowed:
        raise InvalidValueError(
            argument, f"{argument} must be one of {tuple(allowed)}, got {text!r}"
        )
    return text


def check_attempt(value: object) -> int:
    """An attempt number: an int >= 1, or a precise error."""
    attempt = _count("attempt", value)
    if attempt < 1:
        raise InvalidValueError(
            "attempt", f"attempt must be >= 1 (the first attempt is 1), got {value!r}"
        )
    return attempt


def check_pricing(prices: object) -> Pricing | None:
    """A read-only copy of a pricing table, or a precise error naming the bad entry."""
    if prices is None:
        return None
    if not isinstance(prices, Mapping):
        raise TypeError(
            f"prices must be a mapping of (provider, model) to ModelPrice, got {prices!r}"
        )
    table: dict[tuple[str, str], ModelPrice] = {}
    for key, price in prices.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise TypeError(f"a pricing key must be a (provider, model) tuple of str, got {key!r}")
        if not isinstance(price, ModelPrice):
            raise TypeError(f"the price of {key!r} must be a ModelPrice, got {price!r}")
        table[key] = price
    return MappingProxyType(table)


class GatewayFamilies:
    """The gateway-native families of one registry, next to its other domain families."""

    def __init__(self, families: _Families) -> None:
        registry = families.registry
        caps = families.config.label_caps

        def label(metric: str, argument: str, cap: int) -> _Label:
            return _Label(argument, BoundedLabel(registry, metric, argument, cap), None)

        self.fallbacks = Counter(
            "model_fallbacks",
            "Requests moved from one model to another, by reason (error, timeout, "
            "rate_limited, context_window, content_policy, other).",
            ["from_model", "to_model", "reason"],
            registry=None,
        )
        self.retries = Counter(
            "model_inference_retries",
            "Upstream inference calls that were not their request's first attempt "
            "(retries and fallbacks); model_inference_requests_total counts every attempt.",
            ["provider", "model"],
            registry=None,
        )
        self.attempts = Histogram(
            "gateway_request_attempts",
            "Upstream attempts a request took, by the model the client asked for.",
            ["model"],
            buckets=REQUEST_ATTEMPTS_BUCKETS,
            registry=None,
        )
        self.rejections = Counter(
            "gateway_rejections",
            "Requests the gateway refused by its own limits, by scope (key, user, org, "
            "global) and kind (rpm, tpm, credits, concurrency).",
            ["scope", "kind"],
            registry=None,
        )
        self.upstream_limited = Counter(
            "provider_rate_limited",
            "Upstream calls a provider refused with its own rate limit (HTTP 429).",
            ["provider", "model"],
            registry=None,
        )
        self.cost = Counter(
            "provider_cost",
            "What upstream calls cost the gateway, in currency units.",
            ["provider", "model", "currency"],
            registry=None,
        )
        self.unpriced = Counter(
            "inference_unpriced",
            "Upstream calls whose cost is unknown (no price for the provider and model).",
            ["provider", "model"],
            registry=None,
        )
        self.collectors: tuple[Counter | Histogram, ...] = (
            self.fallbacks,
            self.retries,
            self.attempts,
            self.rejections,
            self.upstream_limited,
            self.cost,
            self.unpriced,
        )

        fallback_labels = (
            label("model_fallbacks_total", "from_model", caps["model"]),
            label("model_fallbacks_total", "to_model", caps["model"]),
        )
        limited_labels = (
            label("provider_rate_limited_total", "provider", caps["provider"]),
            label("provider_rate_limited_total", "model", caps["model"]),
        )
        # Cost and unpriced calls of a model fold together, so their series line up.
        cost_labels = (
            label("provider_cost_total", "provider", caps["provider"]),
            label("provider_cost_total", "model", caps["model"]),
        )
        currency_label = label("provider_cost_total", "currency", MAX_CURRENCIES)
        attempts_label = (label("gateway_request_attempts", "model", caps["model"]),)

        def fallback(from_model: object, to_model: object, reason: object) -> tuple[Counter, bool]:
            why = _choice("reason", reason, FALLBACK_REASONS)
            (old, new), folded = _resolve(fallback_labels, (from_model, to_model))
            return self.fallbacks.labels(old, new, why), folded

        def rejection(scope: object, kind: object) -> tuple[Counter, bool]:
            where = _choice("scope", scope, REJECTION_SCOPES)
            what = _choice("kind", kind, REJECTION_KINDS)
            return self.rejections.labels(where, what), False

        def cost(provider: object, model: object, currency: object) -> tuple[Counter, bool]:
            money = _currency(currency)
            (p, m), folded = _resolve(cost_labels, (provider, model))
            (c,), folded_currency = _resolve((currency_label,), (money,))
            return self.cost.labels(p, m, c), folded or folded_currency

        def children(metric: M, labels: Sequence[_Label]) -> Callable[..., tuple[M, bool]]:
            def resolve(*values: object) -> tuple[M, bool]:
                bounded, folded = _resolve(labels, values)
                return metric.labels(*bounded), folded

            return resolve

        self.fallback: _ChildCache[Counter] = _ChildCache(fallback)
        self.rejection: _ChildCache[Counter] = _ChildCache(rejection)
        self.provider_cost: _ChildCache[Counter] = _ChildCache(cost)
        # Retries fold exactly like model_inference_requests_total: same bounded labels.
        self.retry: _ChildCache[Counter] = _ChildCache(
            children(self.retries, families.inference_labels)
        )
        self.attempts_of: _ChildCache[Histogram] = _ChildCache(
            children(self.attempts, attempts_label)
        )
        self.limited: _ChildCache[Counter] = _ChildCache(
            children(self.upstream_limited, limited_labels)
        )
        self.unpriced_of: _ChildCache[Counter] = _ChildCache(children(self.unpriced, cost_labels))
        self.pricing: Pricing | None = None

    # --- recording ---------------------------------------------------------------------

    def record_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        self.fallback.get((from_model, to_model, reason)).inc()

    def record_request_attempts(self, model: str, attempts: int) -> None:
        count = _count("attempts", attempts)
        if count < 1:
            raise InvalidValueError(
                "attempts",
                f"attempts must be >= 1 (a request that reached no provider has none), "
                f"got {attempts!r}",
            )
        self.attempts_of.get((model,)).observe(count)

    def record_gateway_rejection(self, scope: str, kind: str) -> None:
        self.rejection.get((scope, kind)).inc()

    def record_upstream_rate_limited(self, provider: str, model: str) -> None:
        self.limited.get((provider, model)).inc()

    def record_provider_cost(
        self, provider: str, model: str, cost: float | None, currency: str
    ) -> None:
        if cost is None:
            self.unpriced_of.get((provider, model)).inc()
            return
        amount = _number("cost", cost)
        self.provider_cost.get((provider, model, currency)).inc(amount)

    def charge_tokens(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        """Cost of a call from the pricing table, if one is set (tokens already checked)."""
        pricing = self.pricing
        if pricing is None:
            return
        price = pricing.get((provider, model))
        if price is None:
            self.unpriced_of.get((provider, model)).inc()
            return
        self.provider_cost.get((provider, model, price.currency)).inc(
            price.cost(input_tokens, output_tokens)
        )
