"""Masking secrets in text: URL passwords (``user:PASSWORD@``) and secret query parameters.

Logs (:mod:`defectscan.logs`), ``config show`` and health details pass what they print through
:func:`mask_secrets`; the plant-file check (:mod:`defectscan.plant_file`) refuses a URL whose
query has a key :func:`is_secret_key` names.
"""

from __future__ import annotations

import re

__all__ = ["is_secret_key", "mask_secrets"]

# scheme://user:PASSWORD@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)")
# ?password=VALUE / &token=VALUE ... in a URL's query (the key decides, see is_secret_key)
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<key>[A-Za-z0-9_.-]+)=)(?P<value>[^&#\s'\"]+)")
# Query keys that carry a secret: any key containing one of these words (case-insensitive).
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "apikey", "api_key")
_SECRET_KEYS = frozenset({"pass", "pwd", "auth", "key", "access_key", "private_key"})


def is_secret_key(name: str) -> bool:
    """Whether a URL query parameter called ``name`` carries a secret (``password``, ``token``)."""
    key = name.lower().replace("-", "_")
    return key in _SECRET_KEYS or any(word in key for word in _SECRET_WORDS)


def _mask_param(match: re.Match[str]) -> str:
    if is_secret_key(match["key"]):
        return f"{match['head']}***"
    return match.group(0)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it (user info and query) replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_mask_param, text)
    return text
