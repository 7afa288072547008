"""
Logging helpers: the :func:`redact_secrets` structlog processor.

authfsm emits structlog events with dotted names (``authfsm.transition``,
``authfsm.refresh.call``, ``authfsm.refresh.adopted``, ``authfsm.refresh.poisoned``, ...) and
never calls ``structlog.configure``. Its own events carry fingerprints, never tokens; add
:func:`redact_secrets` to your processors to also scrub secrets your own code might log.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any, Final

__all__ = ["SENSITIVE_KEYS", "redact_secrets"]

#: Keys whose values are always replaced.
SENSITIVE_KEYS: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "client_secret",
        "authorization",
        "api_key",
        "password",
        "openai_api_key",
    }
)

_REDACTED: Final = "[redacted]"
# A JWT (three base64url parts) or a bearer credential inside free text.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _BEARER.sub(r"\1" + _REDACTED, _JWT.sub(_REDACTED, value))
    if isinstance(value, dict):
        return {
            k: (_REDACTED if str(k).lower() in SENSITIVE_KEYS else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """
    A structlog processor that replaces secrets with ``"[redacted]"``.

    Values of sensitive keys (``access_token``, ``refresh_token``, ``client_secret``,
    ``authorization``, ...) are replaced wherever they appear, nested dicts included; JWTs and
    ``Bearer`` credentials inside other strings are masked.

    >>> redact_secrets(None, "info", {"event": "x", "access_token": "abc", "n": 1})
    {'event': 'x', 'access_token': '[redacted]', 'n': 1}
    """
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = _REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict
