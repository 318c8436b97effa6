"""Google Cloud Storage through the official `google-cloud-storage` client.

The same code talks to real GCS (Application Default Credentials) and to an emulator when
`STORAGE_EMULATOR_HOST` is set. Ranged reads use `download_as_bytes(start, end)` pinned to the
generation seen at `stat`, which on the emulator measurement moved only the requested bytes and
cannot mix two versions of an object that is overwritten mid-read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from backtest_pipeline.storage.base import (
    ObjectInfo,
    ObjectNotFoundError,
    PermissionDeniedError,
    StorageError,
    TransientStorageError,
)

_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    auth_exc.TransportError,
    ConnectionError,
    TimeoutError,
)
_TIMEOUT = (10.0, 120.0)


_PEM = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
_KEYWORD_SECRET = re.compile(
    r"(?i)(bearer|token|authorization|private_key_id|private_key|client_secret|refresh_token|password)"
    r"([\"'=: ]+)[A-Za-z0-9._\-/+=]{8,}"
)
# Bare credentials, whatever surrounds them: Google OAuth access tokens (ya29.), refresh tokens
# (1//), and JWTs (signed assertions, ID tokens).
_BARE_SECRET = re.compile(
    r"\bya29\.[A-Za-z0-9._\-]+|\b1//[A-Za-z0-9._\-]{20,}|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)


def _redact(text: str) -> str:
    """Error texts of HTTP clients can echo headers, tokens or key material: never let them through."""
    text = _PEM.sub("<redacted private key>", text)
    text = _BARE_SECRET.sub("<redacted>", text)
    return _KEYWORD_SECRET.sub(r"\1\2<redacted>", text)


class _RedactingFilter(logging.Filter):
    """Redact records of the Google client libraries: their DEBUG retry logs quote server responses."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business
            return True
        redacted = _redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_LIBRARY_LOGGERS = (
    "google.api_core.retry",
    "google.api_core.retry_async",
    "google.cloud.storage",
    "google.cloud.storage._bucket_metadata_cache",
    "google.cloud.storage._http",
    "google.auth.transport.requests",
    "google.auth._default",
    "google.resumable_media",
    "urllib3.connectionpool",
)
_filter_installed = False


def _install_log_redaction() -> None:
    global _filter_installed
    if _filter_installed:
        return
    f = _RedactingFilter()
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).addFilter(f)
    _filter_installed = True


class GCSBackend:
    name = "gcs"

    def __init__(self, project: str | None = None) -> None:
        _install_log_redaction()
        self.emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        self._project = project
        self._local = threading.local()
        self._known_buckets: set[str] = set()

    @property
    def client(self) -> storage.Client:
        # requests sessions are not thread-safe: one client per thread.
        client = getattr(self._local, "client", None)
        if client is None:
            if self.emulator:
                client = storage.Client(
                    project=self._project or "local-emulator",
                    credentials=AnonymousCredentials(),
                    client_options={"api_endpoint": self.emulator},
                )
            else:
                client = storage.Client(project=self._project)
            self._local.client = client
        return client

    def uri(self, bucket: str, path: str) -> str:
        return f"gs://{bucket}/{path}"

    def _wrap(self, exc: Exception, bucket: str, path: str, op: str) -> StorageError:
        where = self.uri(bucket, path)
        msg = _redact(f"{op} {where} failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, gexc.NotFound):
            return ObjectNotFoundError(f"object {where} does not exist", bucket=bucket, path=path)
        if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
            return PermissionDeniedError(msg, bucket=bucket, path=path)
        if isinstance(exc, _TRANSIENT):
            return TransientStorageError(msg, bucket=bucket, path=path)
        return StorageError(msg, bucket=bucket, path=path)

    def _call(self, op: str, bucket: str, path: str, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            raise self._wrap(exc, bucket, path, op) from None

    def stat(self, bucket: str, path: str) -> ObjectInfo:
        def go() -> ObjectInfo:
            blob = self.client.bucket(bucket).get_blob(path, timeout=_TIMEOUT, retry=None)
            if blob is None:
                raise ObjectNotFoundError(
                    f"object {self.uri(bucket, path)} does not exist", bucket=bucket, path=path
                )
            return ObjectInfo(
                bucket=bucket, path=path, size=int(blob.size or 0), generation=str(blob.generation)
            )

        return self._call("stat", bucket, path, go)

    def read(self, bucket: str, path: str, generation: str | None = None) -> bytes:
        def go() -> bytes:
            blob = self.client.bucket(bucket).blob(
                path, generation=int(generation) if generation else None
            )
            return blob.download_as_bytes(timeout=_TIMEOUT, retry=None, checksum=None)

        return self._call("download", bucket, path, go)

    def read_range(
        self, bucket: str, path: str, start: int, end: int, generation: str | None = None
    ) -> bytes:
        if end <= start:
            return b""

        def go() -> bytes:
            blob = self.client.bucket(bucket).blob(
                path, generation=int(generation) if generation else None
            )
            # The client's `end` is inclusive.
            return blob.download_as_bytes(
                start=start, end=end - 1, timeout=_TIMEOUT, retry=None, checksum=None
            )

        return self._call("ranged download", bucket, path, go)

    def _ensure_bucket(self, bucket: str) -> None:
        """Only against an emulator: real buckets are infrastructure, never created by a run."""
        if not self.emulator or bucket in self._known_buckets:
            return
        b = self.client.bucket(bucket)
        if not b.exists(timeout=_TIMEOUT):
            with contextlib.suppress(gexc.Conflict):
                self.client.create_bucket(bucket, timeout=_TIMEOUT)
        self._known_buckets.add(bucket)

    def write(self, bucket: str, path: str, data: bytes, content_type: str) -> ObjectInfo:
        def go() -> ObjectInfo:
            self._ensure_bucket(bucket)
            blob = self.client.bucket(bucket).blob(path)
            # retry=None: our RetryPolicy restarts the whole upload, which is what an interrupted
            # resumable upload needs anyway (the emulator forgets its session on restart).
            blob.upload_from_string(data, content_type=content_type, timeout=_TIMEOUT, retry=None)
            return ObjectInfo(
                bucket=bucket, path=path, size=len(data), generation=str(blob.generation)
            )

        return self._call("upload", bucket, path, go)

    def write_file(self, bucket: str, path: str, src: Path, content_type: str) -> ObjectInfo:
        def go() -> ObjectInfo:
            self._ensure_bucket(bucket)
            blob = self.client.bucket(bucket).blob(path)
            # Streamed from the file in chunks (resumable upload); retried whole, as ``write``.
            blob.upload_from_filename(
                str(src), content_type=content_type, timeout=_TIMEOUT, retry=None
            )
            return ObjectInfo(
                bucket=bucket, path=path, size=src.stat().st_size, generation=str(blob.generation)
            )

        return self._call("upload", bucket, path, go)

    def list(self, bucket: str, prefix: str) -> list[str]:
        def go() -> list[str]:
            try:
                blobs = self.client.list_blobs(bucket, prefix=prefix, timeout=_TIMEOUT, retry=None)
                return sorted(b.name for b in blobs)
            except gexc.NotFound:
                return []

        return self._call("list", bucket, prefix, go)

    def delete(self, bucket: str, path: str) -> None:
        def go() -> None:
            with contextlib.suppress(gexc.NotFound):
                self.client.bucket(bucket).blob(path).delete(timeout=_TIMEOUT, retry=None)

        self._call("delete", bucket, path, go)

    def exists(self, bucket: str, path: str) -> bool:
        return self._call(
            "exists",
            bucket,
            path,
            lambda: self.client.bucket(bucket).blob(path).exists(timeout=_TIMEOUT, retry=None),
        )
