"""What every storage backend offers, the errors it raises, and the one retry policy.

Backends are deliberately small (stat, read, ranged read, atomic write, list, delete): the
Parquet-aware and format-aware logic lives once in `ucs.py` and `storage/parquet_ranges.py`, so
the local directory and GCS behave the same by construction.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the bucket and the path."""

    def __init__(self, message: str, *, bucket: str = "", path: str = "") -> None:
        super().__init__(message)
        self.bucket = bucket
        self.path = path


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object does not exist (permanent: never retried)."""


class PermissionDeniedError(StorageError, PermissionError):
    """403-like errors (permanent: never retried)."""


class TransientStorageError(StorageError):
    """Connection resets, 429 and 5xx: worth retrying."""


@dataclass(frozen=True)
class ObjectInfo:
    """Identity of one stored object: its size and a version token.

    On GCS the token is the object generation; on the local root it is a content checksum, so a
    summary can always say exactly which bytes a run read.
    """

    bucket: str
    path: str
    size: int
    generation: str


class Backend(Protocol):
    """The minimal surface a storage root must provide."""

    name: str

    def uri(self, bucket: str, path: str) -> str: ...

    def stat(self, bucket: str, path: str) -> ObjectInfo: ...

    def read(self, bucket: str, path: str) -> bytes: ...

    def read_range(self, bucket: str, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object."""
        ...

    def write(self, bucket: str, path: str, data: bytes, content_type: str) -> ObjectInfo: ...

    def write_file(self, bucket: str, path: str, src: Path, content_type: str) -> ObjectInfo:
        """The object from the local file ``src``, streamed: atomic, as ``write``."""
        ...

    def list(self, bucket: str, prefix: str) -> list[str]: ...

    def delete(self, bucket: str, path: str) -> None: ...

    def exists(self, bucket: str, path: str) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter, for transient errors only."""

    attempts: int = 6
    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        delay = self.initial_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise TransientStorageError(
                        f"{exc} (gave up after {self.attempts} attempts)",
                        bucket=exc.bucket,
                        path=exc.path,
                    ) from exc
                sleep = min(self.max_s, delay) * (0.5 + random.random() / 2)
                log.warning("transient storage error on %s (attempt %d): %s", what, attempt, exc)
                time.sleep(sleep)
                delay *= self.multiplier
        raise AssertionError("unreachable")
