"""Label value cleaning: one function every user-supplied label value goes through.

It runs once per distinct value (callers cache the result), so it may afford a hash.
"""

from __future__ import annotations

from gatewayz_metrics._secrets import SecretDetector, fingerprint
from gatewayz_metrics._validation import InvalidTypeError, InvalidValueError, shown

MAX_LABEL_LENGTH = 128
"""Longest label value kept as is; longer ones are cut and suffixed with a fingerprint."""

_KEPT_PREFIX = MAX_LABEL_LENGTH - 1 - len(fingerprint(""))


def check_str(argument: str, value: object, *, show_value: bool = True) -> str:
    """Return `value` if it is a `str`, else raise a `TypeError` naming `argument`."""
    if not isinstance(value, str):
        text = f" {shown(value)}" if show_value else ""
        raise InvalidTypeError(
            argument, f"{argument} must be a str, got {type(value).__name__}{text}"
        )
    return value


def clean_label(
    argument: str,
    value: object,
    *,
    required: bool = False,
    secret_detector: SecretDetector | None = None,
) -> str:
    """Turn a caller's value into a safe label value, or raise naming `argument`.

    - not a `str`: `TypeError`; empty (or blank) while `required`: `ValueError`;
    - a value `secret_detector` flags becomes `sha256:` + 12 hex digits, and so does any
      value longer than `MAX_LABEL_LENGTH` of a label with a `secret_detector`;
    - lone surrogates, which would make the whole exposition fail to encode, become `?`;
    - a value longer than `MAX_LABEL_LENGTH` keeps its start and gets `~sha256:<12 hex>`
      of the full value appended, so two long values that share a prefix stay distinct.
    """
    # The value of a label that may carry secrets stays out of error messages (and logs).
    raw = check_str(argument, value, show_value=secret_detector is None)
    if required and not raw.strip():
        raise InvalidValueError(argument, f"{argument} must be a non-empty string, got {raw!r}")
    # A value too long to keep whole would show its start: for a label that may carry a
    # credential, that start could be the credential. And the detector never has to scan
    # a hostile megabyte on the event loop.
    if secret_detector is not None and (len(raw) > MAX_LABEL_LENGTH or secret_detector(raw)):
        return fingerprint(raw)
    text = raw if raw.isascii() else raw.encode("utf-8", "replace").decode("utf-8")
    if len(text) > MAX_LABEL_LENGTH:
        return text[:_KEPT_PREFIX] + "~" + fingerprint(raw)
    return text
