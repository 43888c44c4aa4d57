"""Making asset hrefs readable: SAS signing (Planetary Computer) and S3 access (CDSE).

Two ways a provider guards its pixels, both kept as data on the provider profile:

* **Signed URLs.** :class:`HrefSigning` holds a signer, a callable turning an href into a
  readable one (``planetary_computer.sign_url`` for the real Planetary Computer). Tokens
  expire. :func:`signed_href` reads a SAS token's expiry (``se=``) and signs again, after
  asking the signer to forget its cached token, when the token has expired or would expire
  before the reads are done. A token the asset server refuses anyway (HTTP 403 mid-read: an
  expired or revoked token) makes the read a transient failure, and the next attempt signs
  afresh (:meth:`scenestore.stac.StacStoreManager.ingest`).
* **S3 credentials.** :class:`S3Access` says how GDAL's ``/vsis3/`` reaches a bucket: the
  endpoint, HTTPS, path-style addressing, region and, optionally, an AWS profile name. The
  options are set for the bucket's ``/vsis3/<bucket>/`` path only
  (``VSISetPathSpecificOption``), so reads from other buckets are unaffected. Credentials are
  never read, copied or logged by scenestore: GDAL takes ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``) from the environment, or the named AWS
  profile from ``~/.aws/credentials``, itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from scenestore.errors import InvalidRequestError, SourceError, TransientSourceError
from scenestore.redact import redact, strip_query

logger = logging.getLogger(__name__)

#: A callable that turns an asset href into one the asset server will answer.
Signer = Callable[[str], str]

#: Seconds a token must still be valid when a scene's reads start; reading a full scene takes
#: minutes, and a token that runs out half-way fails the rest of the reads.
RESIGN_MARGIN_S = 600.0

#: Times a signer is asked for a token that outlives the margin before giving up.
SIGN_ATTEMPTS = 3


@dataclass(frozen=True)
class HrefSigning:
    """How a provider's hrefs are signed before reading.

    Attributes:
        sign: Turns an unsigned href into a signed one (must be thread-safe).
        refresh: Makes the next ``sign`` call fetch a new token instead of a cached one
            (e.g. clears ``planetary_computer``'s token cache); None when ``sign`` never
            caches.
        margin_s: A signed href whose token expires within this many seconds is signed again.
    """

    sign: Signer
    refresh: Callable[[], None] | None = None
    margin_s: float = RESIGN_MARGIN_S

    def refresh_tokens(self) -> None:
        """Forget cached tokens, so the next signature uses a new one."""
        if self.refresh is not None:
            self.refresh()


def sas_expiry(href: str) -> datetime | None:
    """Return when the SAS token in a signed href expires (its ``se=``), or None if unsigned.

    Raises:
        InvalidRequestError: If ``se`` is present but not an ISO 8601 time.
    """
    values = parse_qs(urlsplit(href).query).get("se")
    if not values:
        return None
    text = values[-1].strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"Signed href {strip_query(href)!r} has an unreadable expiry se={text!r}; expected "
            "an ISO 8601 time such as 2024-05-14T19:00:49Z."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def signed_href(href: str, signing: HrefSigning, *, now: datetime | None = None) -> str:
    """Sign ``href``, signing again with a fresh token while the token would expire too soon.

    Args:
        href: The unsigned asset href.
        signing: The provider's signing.
        now: The current time (UTC); for tests.

    Returns:
        The signed href, whose token (if it names an expiry) outlives ``signing.margin_s``.

    Raises:
        SourceError: If the signer keeps handing out tokens that expire too soon.
        TransientSourceError: If the signer could not reach its token service.
    """
    expiry: datetime | None = None
    for attempt in range(1, SIGN_ATTEMPTS + 1):
        signed = signing.sign(href)
        expiry = sas_expiry(signed)
        current = now or datetime.now(UTC)
        if expiry is None or (expiry - current).total_seconds() > signing.margin_s:
            return signed
        logger.info(
            "Token for %s expires at %s (within %g s); signing it again (attempt %d)",
            strip_query(href),
            expiry.isoformat(),
            signing.margin_s,
            attempt,
        )
        signing.refresh_tokens()
    raise SourceError(
        f"Signing {strip_query(href)!r} {SIGN_ATTEMPTS} times gave tokens that expire at "
        f"{expiry.isoformat() if expiry else '?'}, within {signing.margin_s:g} s; expected a "
        "fresh token (check the signer, its token service and this machine's clock)."
    )


def sign_planetary_computer(href: str) -> str:
    """Sign an Azure Blob Storage href with a Planetary Computer SAS token.

    Uses ``planetary_computer.sign_url``, which caches one token per storage container.

    Raises:
        TransientSourceError: If the SAS token endpoint cannot be reached or fails.
    """
    import planetary_computer
    import requests

    try:
        return _with_deadline(planetary_computer.sign_url, href)
    except TimeoutError as err:
        raise TransientSourceError(
            f"Cannot sign {strip_query(href)!r}: the Planetary Computer token endpoint did not "
            f"answer within {err.args[0]:g} s; expected an answer (retry later, or raise "
            "--timeout / SCENESTORE_HTTP_TIMEOUT)."
        ) from err
    except (requests.RequestException, OSError, ValueError) as err:
        raise TransientSourceError(
            f"Cannot sign {strip_query(href)!r} with a Planetary Computer SAS token "
            f"({type(err).__name__}: {redact(str(err))[:200]}); expected the token endpoint "
            "https://planetarycomputer.microsoft.com/api/sas/v1/token to answer."
        ) from err


def _with_deadline(func: Callable[[str], str], href: str) -> str:
    """Call ``func(href)`` but give up after the configured timeouts.

    ``planetary_computer`` requests its SAS token without a timeout, so a token endpoint that
    never answers would hang the ingest; the call runs in a daemon thread that may be left
    behind (it holds no lock of ours) rather than block the run forever.

    Raises:
        TimeoutError: With the deadline in seconds as its argument.
    """
    import queue

    from scenestore.network import timeouts

    limits = timeouts()
    deadline = limits.connect_s + limits.read_s
    answer: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def call() -> None:
        try:
            answer.put((True, func(href)))
        except BaseException as err:  # handed to the caller's thread, raised there
            answer.put((False, err))

    threading.Thread(target=call, daemon=True, name="sas-sign").start()
    try:
        ok, value = answer.get(timeout=deadline)
    except queue.Empty:
        raise TimeoutError(deadline) from None
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def refresh_planetary_computer() -> None:
    """Forget ``planetary_computer``'s cached SAS tokens, so the next signature is fresh."""
    from planetary_computer import sas

    sas.TOKEN_CACHE.clear()


#: The real Planetary Computer signing.
PLANETARY_COMPUTER_SIGNING = HrefSigning(
    sign=sign_planetary_computer, refresh=refresh_planetary_computer
)


@dataclass(frozen=True)
class S3Access:
    """How GDAL reaches ``s3://`` hrefs of one provider (no credentials here, ever).

    Attributes:
        endpoint: S3 endpoint as ``host[:port]`` or a URL (``http://127.0.0.1:9000``: the
            scheme sets HTTPS); None takes ``AWS_S3_ENDPOINT`` from the environment, else
            ``default_endpoint``.
        default_endpoint: The provider's endpoint when neither of the above names one.
        https: Whether to use HTTPS (a URL endpoint's scheme wins).
        virtual_hosting: Bucket in the host name (AWS style) rather than in the path.
        region: ``AWS_REGION`` for request signing, or None for GDAL's default.
        aws_profile: AWS profile (``~/.aws/credentials``) to take credentials from; None
            leaves the choice to GDAL (environment variables, then ``AWS_PROFILE``).
    """

    endpoint: str | None = None
    default_endpoint: str = "s3.amazonaws.com"
    https: bool = True
    virtual_hosting: bool = False
    region: str | None = None
    aws_profile: str | None = None


def s3_options(access: S3Access, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the GDAL ``/vsis3/`` options for ``access`` (pure; never credentials).

    Args:
        access: The provider's S3 access.
        environ: Environment to read ``AWS_S3_ENDPOINT`` from (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    endpoint = access.endpoint or env.get("AWS_S3_ENDPOINT") or access.default_endpoint
    https = access.https
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        https = parts.scheme.lower() == "https"
        endpoint = parts.netloc
    options = {
        "AWS_S3_ENDPOINT": endpoint.rstrip("/"),
        "AWS_HTTPS": "YES" if https else "NO",
        "AWS_VIRTUAL_HOSTING": "TRUE" if access.virtual_hosting else "FALSE",
    }
    if access.region:
        options["AWS_REGION"] = access.region
    if access.aws_profile:
        options["AWS_PROFILE"] = access.aws_profile
    return options


def s3_credential_source(
    access: S3Access, environ: Mapping[str, str] | None = None, home: Path | None = None
) -> str:
    """Say where GDAL will find S3 credentials, without reading them.

    Returns:
        ``"environment"``, ``"unsigned"`` or ``"AWS profile '<name>'"``.

    Raises:
        SourceError: If there are no credentials anywhere GDAL looks.
    """
    env = os.environ if environ is None else environ
    if access.aws_profile is None:
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return "environment"
        if env.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "ON", "1"):
            return "unsigned"
    profile = access.aws_profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    files = [
        env.get("CPL_AWS_CREDENTIALS_FILE"),
        env.get("AWS_SHARED_CREDENTIALS_FILE"),
        str((home or Path.home()) / ".aws" / "credentials"),
    ]
    if any(f and Path(f).is_file() for f in files):
        return f"AWS profile {profile or 'default'!r}"
    raise SourceError(
        "No S3 credentials found; expected AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
        "environment or an AWS profile in ~/.aws/credentials (for CDSE: the S3 keys generated "
        "for your Copernicus Data Space Ecosystem account)."
    )


_applied: dict[str, dict[str, str]] = {}
_applied_lock = threading.Lock()


def configure_s3(access: S3Access, buckets: Iterable[str]) -> dict[str, str]:
    """Set the ``/vsis3/`` options of ``access`` for the given buckets only (idempotent).

    Returns:
        The options set (no credentials), for logging.

    Raises:
        SourceError: If no S3 credentials can be found.
    """
    options = s3_options(access)
    source = s3_credential_source(access)
    with _applied_lock:
        for bucket in sorted(set(buckets)):
            prefix = f"/vsis3/{bucket}/"
            if _applied.get(prefix) == options:
                continue
            _set_path_options(prefix, options)
            _applied[prefix] = options
            logger.debug(
                "S3 bucket %s: endpoint %s, https %s, credentials from %s",
                bucket,
                options["AWS_S3_ENDPOINT"],
                options["AWS_HTTPS"],
                source,
            )
    return options


def s3_buckets(hrefs: Iterable[str]) -> set[str]:
    """Return the buckets of the ``s3://`` hrefs among ``hrefs``."""
    return {urlsplit(h).netloc for h in hrefs if h.startswith("s3://")}


def forget_s3_reads(hrefs: Iterable[str]) -> None:
    """Make GDAL forget what it cached of ``s3://`` hrefs, failed opens included.

    A read that failed (say, before the right credentials were set) is otherwise answered from
    GDAL's cache without a request, as is a changed object.
    """
    from scenestore.gdal import _libgdal

    lib = _libgdal()
    if lib is None:
        return
    for href in hrefs:
        if href.startswith("s3://"):
            lib.VSICurlPartialClearCache(f"/vsis3/{href[5:]}".encode())


def _set_path_options(prefix: str, options: Mapping[str, str]) -> None:
    from scenestore.gdal import _libgdal

    lib = _libgdal()
    func = getattr(lib, "VSISetPathSpecificOption", None) if lib is not None else None
    if func is None:
        raise SourceError(
            f"Cannot set GDAL options for {prefix!r}: the loaded GDAL has no "
            "VSISetPathSpecificOption; expected GDAL >= 3.6."
        )
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    func.restype = None
    for key, value in options.items():
        func(prefix.encode(), key.encode(), value.encode())


__all__ = [
    "PLANETARY_COMPUTER_SIGNING",
    "RESIGN_MARGIN_S",
    "HrefSigning",
    "S3Access",
    "Signer",
    "configure_s3",
    "forget_s3_reads",
    "refresh_planetary_computer",
    "s3_buckets",
    "s3_credential_source",
    "s3_options",
    "sas_expiry",
    "sign_planetary_computer",
    "signed_href",
]
