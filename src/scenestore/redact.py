"""Keep secrets out of logs, errors and artifacts: redact signed-URL tokens and credentials."""

from __future__ import annotations

import re

_PATTERNS = [
    # Query-string secrets: SAS signatures and tokens, AWS presigned parameters, API keys.
    (
        re.compile(
            r"(?i)([?&](?:sig|se|st|sv|skoid|sktid|skt|ske|sks|skv|token|access_token|"
            r"x-amz-signature|x-amz-credential|x-amz-security-token|api_key|apikey)=)[^&\s'\"]+"
        ),
        r"\1REDACTED",
    ),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "AKIA****REDACTED"),
    (
        re.compile(
            r"(?i)(aws_secret_access_key|aws_session_token|secret_access_key|password)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",&]+"
        ),
        r"\1\2REDACTED",
    ),
    (re.compile(r"(?i)(https?://)[^/@\s:]+:[^/@\s]+@"), r"\1REDACTED@"),
]


def redact(text: str) -> str:
    """Return ``text`` with signed-URL tokens, AWS keys and URL passwords replaced."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def strip_query(href: str) -> str:
    """Return an href without its query string (signed URLs carry their secrets there)."""
    return href.split("?", 1)[0]
