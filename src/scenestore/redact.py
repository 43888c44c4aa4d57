"""Keep secrets out of logs, errors and artifacts: redact signed-URL tokens and credentials.

Three kinds of secret are hidden: query-string tokens (SAS ``sig``/``se``/``st``..., AWS
presigned parameters, API keys), credential-shaped text (``AKIA...`` key ids, ``password=``,
SigV4 ``Credential=``/``Signature=``, ``user:password@`` in URLs), and the current values of
the environment variables in :data:`SECRET_ENV_VARS` wherever they appear verbatim (CDSE access
keys have no recognisable shape, so their values are matched instead).

:class:`RedactingFilter` applies :func:`redact` to log records; :func:`install_log_redaction`
puts it on the loggers of the libraries that print URLs (GDAL via rasterio, odc-stac, urllib3).
"""

from __future__ import annotations

import logging
import os
import re

#: Environment variables whose values are secrets wherever they show up.
SECRET_ENV_VARS: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "PC_SDK_SUBSCRIPTION_KEY",
)

#: Values shorter than this are not replaced verbatim (too likely to hit ordinary text).
_MIN_SECRET_LENGTH = 8

_QUERY_KEYS = (
    r"sig|se|st|sv|skoid|sktid|skt|ske|sks|skv|token|access_token|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|api_key|apikey|"
    r"subscription-key"
)

_PATTERNS = [
    # Query-string secrets: SAS signatures and tokens, AWS presigned parameters, API keys;
    # also a bare SAS token string ("st=...&se=...&sig=...") as the token endpoint sends it.
    (
        re.compile(rf"(?i)((?:^|[?&\s\"'(=:,])(?:{_QUERY_KEYS})=)[^&\s'\"<>)]+"),
        r"\1REDACTED",
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AKIA****REDACTED"),
    (
        re.compile(
            r"(?i)(aws_secret_access_key|aws_session_token|secret_access_key|password|"
            r"secretkey|secret_key|sessiontoken)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",&<]+"
        ),
        r"\1\2REDACTED",
    ),
    # SigV4 Authorization header parts and S3 XML error fields that echo the key id.
    (re.compile(r"(?i)\b(Credential|Signature)=[^,\s'\"]+"), r"\1=REDACTED"),
    (
        re.compile(r"(?i)(<(AWSAccessKeyId|SignatureProvided|StringToSign)>)[^<]*"),
        r"\1REDACTED",
    ),
    (re.compile(r"(?i)(https?://)[^/@\s:]+:[^/@\s]+@"), r"\1REDACTED@"),
]


def _known_secrets() -> list[tuple[str, str]]:
    found = []
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= _MIN_SECRET_LENGTH:
            found.append((value, f"<{name}>"))
    return found


def redact(text: str) -> str:
    """Return ``text`` with signed-URL tokens, credentials and secret env values replaced."""
    for value, name in _known_secrets():
        text = text.replace(value, name)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def strip_query(href: str) -> str:
    """Return an href without its query string (signed URLs carry their secrets there)."""
    return href.split("?", 1)[0]


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and keeps the record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted text; always lets it through."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to logging
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


#: Loggers of the libraries that may print signed URLs or S3 error bodies.
REDACTED_LOGGERS: tuple[str, ...] = (
    "scenestore",
    "rasterio",
    "rasterio._env",
    "rasterio._base",
    "rasterio._io",
    "rasterio._filepath",
    "rasterio.env",
    "rasterio.session",
    "rasterio._err",
    "odc",
    "odc.loader",
    "odc.loader._rio",
    "odc.loader._builder",
    "odc.stac",
    "urllib3.connectionpool",
    "pystac_client",
    "planetary_computer",
)

_FILTER = RedactingFilter()


def install_log_redaction(names: tuple[str, ...] = REDACTED_LOGGERS) -> None:
    """Put :class:`RedactingFilter` on the named loggers (idempotent).

    A filter on a logger sees only that logger's own records, not its children's, so each
    logger that formats URLs is named.
    """
    for name in names:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)


__all__ = [
    "REDACTED_LOGGERS",
    "SECRET_ENV_VARS",
    "RedactingFilter",
    "install_log_redaction",
    "redact",
    "strip_query",
]
