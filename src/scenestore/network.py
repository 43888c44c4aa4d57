"""Timeouts and retry defaults for every request to a source, in one place.

The library (:func:`scenestore.ingest.ingest_items`), the CLI and the Prefect flows read their
defaults from here, so a transient failure is retried the same way whichever runs it.
Timeouts come from the environment so a user can lengthen them without code:

- ``SCENESTORE_HTTP_CONNECT_TIMEOUT``: seconds to wait for a connection (default 10).
- ``SCENESTORE_HTTP_TIMEOUT``: seconds to wait for an answer's next bytes (default 60).
- ``SCENESTORE_RETRY_BACKOFF``: first retry delay in seconds of the library and the CLI
  (default 1; doubles on each retry). Flows take it per run (``options.retry_backoff_seconds``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from scenestore.errors import InvalidRequestError, TransientSourceError
from scenestore.redact import redact

logger = logging.getLogger(__name__)

#: Further attempts after a transient source failure (HTTP 5xx/429, reset, timeout, truncation).
DEFAULT_RETRIES = 4
#: First retry delay in seconds; doubles on each retry.
DEFAULT_BACKOFF_S = 1.0
#: Random extra delay, as a fraction of the delay, so retries of many scenes spread out.
DEFAULT_JITTER = 0.5
#: Seconds to wait for a TCP connection to a STAC API or asset server.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for the next bytes of an answer (a server that accepts and never answers).
DEFAULT_READ_TIMEOUT_S = 60.0

CONNECT_TIMEOUT_ENV = "SCENESTORE_HTTP_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "SCENESTORE_HTTP_TIMEOUT"
BACKOFF_ENV = "SCENESTORE_RETRY_BACKOFF"


@dataclass(frozen=True)
class Timeouts:
    """How long a request may wait.

    Attributes:
        connect_s: Seconds to wait for the connection.
        read_s: Seconds to wait for the answer's next bytes.
    """

    connect_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_s: float = DEFAULT_READ_TIMEOUT_S

    def as_requests(self) -> tuple[float, float]:
        """The ``(connect, read)`` tuple requests and pystac-client take."""
        return (self.connect_s, self.read_s)


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidRequestError(
            f"{name}={text!r} is not a positive number of seconds; expected e.g. {default:g}."
        )
    return value


def timeouts() -> Timeouts:
    """The timeouts in force: the environment's, else the defaults.

    Raises:
        InvalidRequestError: If a timeout variable is not a positive number.
    """
    return Timeouts(
        _seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S),
        _seconds(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S),
    )


def retry_backoff_s() -> float:
    """The first retry delay in force: ``$SCENESTORE_RETRY_BACKOFF``, else the default.

    Raises:
        InvalidRequestError: If the variable is not a positive number.
    """
    return _seconds(BACKOFF_ENV, DEFAULT_BACKOFF_S)


def set_timeout(seconds: float) -> None:
    """Make ``seconds`` this process's read timeout (the CLI's ``--timeout``)."""
    if not seconds > 0:
        raise InvalidRequestError(
            f"--timeout {seconds!r} is not a positive number of seconds; expected e.g. 60."
        )
    os.environ[READ_TIMEOUT_ENV] = f"{seconds:g}"
    os.environ[CONNECT_TIMEOUT_ENV] = f"{min(seconds, timeouts().connect_s):g}"


def transient_retrying(
    retries: int = DEFAULT_RETRIES,
    *,
    backoff_s: float | None = None,
    what: str = "request",
) -> Retrying:
    """A tenacity ``Retrying`` that retries exactly :class:`TransientSourceError`.

    Args:
        retries: Further attempts after the first.
        backoff_s: First delay in seconds (default :func:`retry_backoff_s`); doubles on each
            retry, plus jitter.
        what: What is retried, for the warning logged before each retry.
    """
    if backoff_s is None:
        backoff_s = retry_backoff_s()

    def log_retry(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        logger.warning(
            "Transient failure of %s (attempt %d), retrying: %s",
            what,
            state.attempt_number,
            redact(str(err)),
        )

    before_sleep: Callable[[RetryCallState], None] = log_retry
    return Retrying(
        retry=retry_if_exception_type(TransientSourceError),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(
            multiplier=backoff_s, max=30 * backoff_s, jitter=backoff_s * DEFAULT_JITTER * 2
        ),
        before_sleep=before_sleep,
        reraise=True,
    )


__all__ = [
    "transient_retrying",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_JITTER",
    "DEFAULT_RETRIES",
    "Timeouts",
    "retry_backoff_s",
    "set_timeout",
    "timeouts",
]
