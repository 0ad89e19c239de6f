"""Secret-looking label values: detect them and replace them by a stable fingerprint.

The source document records credits with `user_id=api_key`. Anything that ends up in a
label value is stored by Prometheus, copied into recording rules and shown on dashboards,
so a key that reaches a label has leaked. `user_id` and `api_key_id` values that look like
credentials are therefore replaced by `sha256:` + 12 hex digits of their SHA-256: stable
(the same key always gives the same series), distinct in practice (48 bits), and useless
to an attacker because the input is a high-entropy token.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable

SecretDetector = Callable[[str], bool]
"""Decides whether a label value looks like a credential."""

FINGERPRINT_PREFIX = "sha256:"
FINGERPRINT_HEX_DIGITS = 12

SECRET_PREFIXES: tuple[str, ...] = (
    "sk-",  # OpenAI, Anthropic (sk-ant-), OpenRouter (sk-or-), DeepSeek
    "sk_",  # Stripe secret keys and many in-house schemes
    "rk_",  # Stripe restricted keys
    "pk_",  # Stripe publishable keys: not secret, but never a user id either
    "ghp_",  # GitHub tokens: personal, OAuth, user, server, refresh
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",  # GitLab
    "xoxa-",  # Slack
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "AKIA",  # AWS access key ids
    "ASIA",
    "AIza",  # Google API keys
    "gw_live_",  # gateway keys
    "gw_test_",
    "eyJ",  # a JWT: base64 of '{"'
)
"""Prefixes of well-known credential formats; a value with one of them and at least eight
more characters is treated as a secret."""

_MIN_CHARS_AFTER_PREFIX = 8
_MIN_TOKEN_LENGTH = 20
_MIN_ALNUM = 16
_MIN_CLASS_SWITCH_RATIO = 0.2
_MIN_ENTROPY_BITS = 3.0
_MIN_CREDENTIAL_AFTER_SCHEME = 7
_MAX_SCANNED = 1024
AUTH_SCHEMES: frozenset[str] = frozenset(
    {
        "bearer",
        "basic",
        "token",
        "apikey",
        "api-key",
        "api_key",
        "x-api-key",
        "key",
        "digest",
        "bot",
        "sso-key",
        "access_token",
        "auth",
        "authorization",
        "secret",
        "password",
    }
)
"""Words that announce a credential (`Authorization` schemes, `key=` and the like): the
token after one is a secret whatever it looks like."""
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.+/=~:]+")
_OWN_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{12}")
_HEX = re.compile(r"(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]+")
# Segments of a readable id (`mixtral-8x22b-instruct`, `Llama-3.1-405B-Instruct`): two
# words of four letters or more between separators read as a name, and only
# the other segments are judged as possible tokens (a capital first letter is a word too).
_WORD_SEPARATORS = re.compile(r"[-_.]+")
_WORD = re.compile(r"[A-Za-z][a-z]{3,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Tokens are separated by whitespace and list punctuation; quotes, brackets and sentence
# punctuation around a token are wrapping, not part of it. `=` stays: base64 padding.
_SEPARATORS = re.compile(r"[\s,;|]+")
_WRAPPING = "\"'`<>()[]{}!?.*#&"
_PARTS = re.compile(r"[:=/@]+")
_NEEDS_SCAN = re.compile(r"[\s,;|\"'`<>()\[\]{}!?.*#&:=/@]")
_LONGEST_SCHEME = max(len(scheme) for scheme in AUTH_SCHEMES)
_SHORTEST_SCHEME = min(len(scheme) for scheme in AUTH_SCHEMES)
# The shortest token any rule can flag: a prefix + 8 characters (`sk-` + 8), or a scheme
# word, `=` and a 7-character credential (`key=` + 7).
_SHORTEST_SECRET = min(
    min(len(prefix) for prefix in SECRET_PREFIXES) + _MIN_CHARS_AFTER_PREFIX,
    min(len(scheme) for scheme in AUTH_SCHEMES) + 1 + _MIN_CREDENTIAL_AFTER_SCHEME,
)


def fingerprint(value: str) -> str:
    """`sha256:` + the first 12 hex digits of the SHA-256 of `value` (UTF-8)."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_DIGITS]


def _class_of(char: str) -> int:
    if char.isdigit():
        return 0
    return 1 if char.islower() else 2


def _shannon_bits_per_char(text: str) -> float:
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_like_secret(value: str) -> bool:
    """The default rule: does `value` look like an API key, token or password hash?

    True for values that start with a well-known credential prefix (`sk-`, `ghp_`, `AKIA`,
    `eyJ` of a JWT...) followed by at least eight characters, for a credential after an
    auth scheme or key word (`Bearer`, `Basic`, `Token`, `ApiKey`, `Api-Key`, `Key`,
    `key=`...), and for long random-looking tokens: at least 20 token characters (letters,
    digits, `_-.+/=~:`) whose character class (digit, lower case, upper case) switches
    often, as it does in random base62/base64 but not in readable ids such as
    `tenant_12345_project_67890`, and 20+ hex digits that mix digits and letters.

    The value is judged whole and token by token: quotes, brackets, whitespace and
    punctuation around a token (`"<key>"`, `<key>!`, `<key> `) and `name=`/`name:` before
    it do not hide it. Canonical (dashed) UUIDs, `user123` and `key_42` stay readable.
    Values longer than 1024 characters are not scanned: they count as secrets.
    """
    if _looks_like_token(value):
        return True
    if len(value) > _MAX_SCANNED:
        return True
    if not _NEEDS_SCAN.search(value):
        return False  # one bare token, judged above: the common case stays cheap
    tokens = [token.strip(_WRAPPING) for token in _SEPARATORS.split(value)]
    tokens = [token for token in tokens if token]
    for index, token in enumerate(tokens):
        size = len(token)
        if size < _SHORTEST_SCHEME:
            continue
        if size <= _LONGEST_SCHEME + 1 and token.rstrip(":=").lower() in AUTH_SCHEMES:
            after = tokens[index + 1] if index + 1 < len(tokens) else ""
            if len(after) >= _MIN_CREDENTIAL_AFTER_SCHEME:
                return True
            continue
        if size < _SHORTEST_SECRET:
            continue  # too short for any rule below, and for `name=` + a credential
        if token != value and _looks_like_token(token):
            return True
        parts = [part.strip(_WRAPPING) for part in _PARTS.split(token)]
        if len(parts) > 1:
            head = parts[0].lower()
            rest = token[len(parts[0]) :].lstrip(":=/@").strip(_WRAPPING)
            if head in AUTH_SCHEMES and len(rest) >= _MIN_CREDENTIAL_AFTER_SCHEME:
                return True  # key=abc1234, Bearer:abc1234
            if not _OWN_FINGERPRINT.fullmatch(token) and any(
                _looks_like_token(part) for part in parts if len(part) >= _SHORTEST_SECRET
            ):
                return True
    return False


def _looks_like_token(value: str) -> bool:
    """Does one token (no surrounding wrapping) look like a credential?"""
    if value.startswith(SECRET_PREFIXES):
        prefix_len = next(len(p) for p in SECRET_PREFIXES if value.startswith(p))
        if len(value) >= prefix_len + _MIN_CHARS_AFTER_PREFIX:
            return True
    if len(value) < _MIN_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value):
        return False
    if _UUID.fullmatch(value) or _OWN_FINGERPRINT.fullmatch(value):
        return False
    if _HEX.fullmatch(value):
        return True  # 20+ hex digits mixing digits and letters: a key or a hash, not a name
    segments = _WORD_SEPARATORS.split(value)
    if sum(1 for segment in segments if _WORD.fullmatch(segment)) >= 2:
        return any(
            _looks_like_token(segment)
            for segment in segments
            if len(segment) >= _MIN_TOKEN_LENGTH and not _WORD.fullmatch(segment)
        )
    alnum = [c for c in value if c.isascii() and c.isalnum()]
    if len(alnum) < _MIN_ALNUM:
        return False
    switches = sum(1 for a, b in itertools.pairwise(alnum) if _class_of(a) != _class_of(b))
    if switches / (len(alnum) - 1) < _MIN_CLASS_SWITCH_RATIO:
        return False
    return _shannon_bits_per_char("".join(alnum)) >= _MIN_ENTROPY_BITS
