"""The project's own exception tree.

Every SDK error (minio, urllib3, kopf's API errors) is translated into one of these at
the module that imports the SDK, so the rest of the code decides what to do from the
class alone::

    RelayError
    ├── ConfigError            invalid settings or spec; the user must fix something
    ├── RetryableError(delay)  the world may heal by itself: 5xx, timeouts, refused
    │   │                      connections, throttling. Retried with backoff, forever
    │   │                      while running; nothing is dropped.
    │   └── CredentialsError   temporary credentials could not be obtained or renewed
    │                          (STS, the Pod Identity agent, IMDS): retried, but nothing
    │                          can be written meanwhile, so readiness is false.
    └── PermanentError         retrying the same call will not help until someone acts:
        │                      AccessDenied, NoSuchBucket, InvalidAccessKeyId. Surfaces
        │                      in readiness/status; the caller still re-checks slowly so
        │                      it recovers by itself once fixed.
        └── NotFoundError      a named object or run does not exist

Messages never contain secret values: they are built from names, keys and codes only.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CredentialsError",
    "NotFoundError",
    "PermanentError",
    "RelayError",
    "RetryableError",
]


class RelayError(Exception):
    """Base of every error runlog-relay raises on purpose."""


class ConfigError(RelayError):
    """Settings, a config file or a RunLogStore spec is invalid."""


class RetryableError(RelayError):
    """A transient failure; try again after ``delay`` seconds (or the caller's backoff).

    ``unsent`` is True when the request certainly never reached the server (the
    connection could not be opened); otherwise a write may still have taken effect, or may
    take effect later (a timed-out request still travelling through a proxy)."""

    def __init__(
        self, message: str, *, delay: float | None = None, code: str = "", unsent: bool = False
    ) -> None:
        super().__init__(message)
        self.delay = delay
        self.code = code
        self.unsent = unsent


class CredentialsError(RetryableError):
    """Temporary credentials could not be obtained or refreshed; the store is unusable
    until they can (readiness false), and the call is retried."""


class PermanentError(RelayError):
    """A failure that needs a human: wrong credentials, a missing bucket, no access."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(PermanentError):
    """The object, prefix or run asked for does not exist."""
