"""Shards and their ``sizes.json`` wherever they live: local paths, ``http(s)://``, ``s3://``, other fsspec URLs, and
webdataset-style ``pipe:CMD``.

Why our own small layer rather than fsspec for everything: a training stream must survive a connection dropped in
the middle of a 1 GB shard without losing or repeating a sample, so HTTP and S3 reads *resume* from the byte offset
reached (``Range: bytes=N-``), with exponential backoff and jitter, and the errors that must stop a run (a missing
object, bad credentials) are told apart from the transient ones (connection reset, timeout, 5xx) that must not. The
S3 client is boto3 (the ``remote`` extra, credentials only from the standard AWS chain, endpoint from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); http(s) and ``pipe:`` need nothing beyond the standard library; any
other scheme fsspec knows (``gs://``, ``az://``, ``memory://`` ...) goes through fsspec when its backend is installed.

Errors: :class:`RemoteNotFoundError` (404 / NoSuchKey; a ``FileNotFoundError``), :class:`RemoteAuthError` (401/403,
InvalidAccessKeyId, SignatureDoesNotMatch, no credentials; a ``PermissionError``), :class:`RemoteError` (a transient
error that outlived the retries, or another server error). Every message names the object through :func:`redact`:
user-info and query-string values (tokens, presigned signatures) never reach a log line or an exception.

This module must stay free of torch: the shard writer (``webdata.writer``) imports it in build workers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fnmatch
import http.client
import io
import logging
import netrc
import os
import random
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from chexone.hosts import is_loopback

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: HTTP statuses worth retrying (timeouts, throttling, server errors).
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_S3_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_S3_AUTH = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                      "AuthorizationHeaderMalformed", "InvalidClientTokenId", "AllAccessDisabled", "401", "403"})
_S3_TRANSIENT = frozenset({"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                           "Throttling", "ThrottlingException", "503", "500"})
_CHUNK = 1 << 20


class RemoteError(OSError):
    """A remote object could not be read or written: a transient error that outlived the retries, or a server
    error that retrying cannot fix. The shard reader counts such a shard as skipped."""


class RemoteNotFoundError(RemoteError, FileNotFoundError):
    """The object (or its bucket) does not exist: HTTP 404/410, S3 NoSuchKey/NoSuchBucket."""


class RemoteAuthError(RemoteError, PermissionError):
    """Credentials are missing or refused: HTTP 401/403, S3 InvalidAccessKeyId/SignatureDoesNotMatch/AccessDenied.
    Never skipped: every other object would fail the same way."""


class RemoteDependencyError(ImportError):
    """The client library for a scheme is not installed."""


# ----------------------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------------------


def scheme_of(url: str) -> str:
    """``"pipe"`` for ``pipe:CMD``, the lower-case URL scheme (``https``, ``s3``, ``gs`` ...), or ``""`` for a local
    path (``file://`` URLs count as local)."""
    url = os.fspath(url)
    if url.startswith("pipe:"):
        return "pipe"
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    return "" if scheme == "file" else scheme


def is_remote(url: str) -> bool:
    """True for anything :func:`open_stream` does not open with ``open()``."""
    return scheme_of(url) != ""


def local_path(url: str) -> str:
    """A local path from a path or a ``file://`` URL."""
    url = os.fspath(url)
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.lower().startswith("file://") else url


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
_QUERY_VALUE = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#\s'\"]+)=(?P<value>[^&;#\s'\"]*)")


def redact(text: Any) -> str:
    """``text`` with every URL's user-info replaced by ``***`` and every query-string value by ``***``.

    Applied to whatever names an object in a log line or an error (URLs, ``pipe:`` commands holding URLs), so tokens
    in ``https://user:token@host/...`` or ``...?X-Amz-Signature=...&token=...`` never leave the process.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))
    return _QUERY_VALUE.sub(lambda m: f"{m['sep']}{m['key']}=***", text)


def split_name(url: str) -> tuple[str, str]:
    """(``parent``, ``name``) of a URL or path: the name is the last path segment, without any query string."""
    url = os.fspath(url)
    if not is_remote(url) or scheme_of(url) == "pipe":
        return os.path.split(url)
    parts = urllib.parse.urlsplit(url)
    parent, _, name = parts.path.rpartition("/")
    return _with_path(parts, parent), name


def sibling(url: str, name: str) -> str:
    """The object ``name`` next to ``url`` (``.../shard-000.tar?tok=x`` -> ``.../sizes.json?tok=x``: a query string
    such as an access token is kept)."""
    url = os.fspath(url)
    if not is_remote(url):
        return os.path.join(os.path.dirname(url), name)
    parts = urllib.parse.urlsplit(url)
    return _with_path(parts, f"{parts.path.rpartition('/')[0]}/{name}", parts.query)


def join(base: str, name: str) -> str:
    """``name`` inside the directory ``base`` (a path or a URL; a URL's query string is kept)."""
    base = os.fspath(base)
    if not is_remote(base):
        return os.path.join(base, name)
    parts = urllib.parse.urlsplit(base)
    return _with_path(parts, parts.path.rstrip("/") + "/" + name, parts.query)


def _with_path(parts: urllib.parse.SplitResult, path: str, query: str = "") -> str:
    """``scheme://netloc`` + ``path`` (+ ``?query``). Not urlunsplit: it drops the ``//`` of an empty netloc for
    schemes it does not know (``memory:///x`` would become ``memory:/x``)."""
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


# ----------------------------------------------------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------------------------------------------------


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must be >= 0")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``retries`` further attempts after a transient error without progress, waiting
    ``backoff * 2**n`` seconds (capped at ``max_backoff``, times a random factor in [0.5, 1) so that many workers
    do not hammer a recovering server in step); ``timeout`` seconds per connect/read.

    Read from ``CHEXONE_REMOTE_RETRIES`` (default 5), ``CHEXONE_REMOTE_BACKOFF`` (0.5 s), ``CHEXONE_REMOTE_MAX_BACKOFF``
    (30 s) and ``CHEXONE_REMOTE_TIMEOUT`` (60 s) at each open, so DataLoader workers see what the launcher set.
    """

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float | None = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(retries=int(_env_number("CHEXONE_REMOTE_RETRIES", cls.retries)),
                   backoff=_env_number("CHEXONE_REMOTE_BACKOFF", cls.backoff),
                   max_backoff=_env_number("CHEXONE_REMOTE_MAX_BACKOFF", cls.max_backoff),
                   timeout=_env_number("CHEXONE_REMOTE_TIMEOUT", cls.timeout) or None)

    def delay(self, failure: int) -> float:
        """Seconds to wait before attempt ``failure + 1`` (``failure`` >= 1)."""
        return min(self.max_backoff, self.backoff * 2 ** (failure - 1)) * (0.5 + random.random() / 2)


def _with_retries(what: str, action: Callable[[], Any], policy: RetryPolicy) -> Any:
    """Run ``action`` until it succeeds; transient errors are retried with backoff, the others raised at once."""
    failure = 0
    while True:
        try:
            return action()
        except Exception as e:  # noqa: BLE001 - classified below
            err = _classify(e, what)
            if not getattr(err, "transient", False):
                raise err from None
            failure += 1
            if failure > policy.retries:
                raise RemoteError(f"{what}: gave up after {failure} attempts: {err}") from None
            wait = policy.delay(failure)
            logger.warning("%s: %s; retry %d of %d in %.1f s", what, err, failure, policy.retries, wait)
            time.sleep(wait)


def _transient(message: str) -> RemoteError:
    err = RemoteError(message)
    err.transient = True  # type: ignore[attr-defined]
    return err


def _classify(e: BaseException, what: str) -> BaseException:
    """Map a client library's exception to RemoteNotFoundError / RemoteAuthError / RemoteError (``transient`` set when
    a retry may help). Messages carry ``what`` (already redacted) and never the URL the library saw."""
    if isinstance(e, (RemoteError, RemoteDependencyError)):
        return e
    if isinstance(e, urllib.error.HTTPError):
        code, reason = e.code, redact(e.reason)
        if code in (404, 410):
            return RemoteNotFoundError(f"{what}: no such object (HTTP {code} {reason})")
        if code in (401, 403):
            return RemoteAuthError(f"{what}: access refused (HTTP {code} {reason}): check the credentials (URL "
                                   "user-info, ~/.netrc, or the token in the URL)")
        if code in _TRANSIENT_STATUS or code >= 500:
            return _transient(f"HTTP {code} {reason}")
        return RemoteError(f"{what}: HTTP {code} {reason}")
    if isinstance(e, urllib.error.URLError):
        if isinstance(e.reason, ssl.SSLCertVerificationError):  # a wrong certificate does not fix itself
            return RemoteError(f"{what}: {redact(e.reason)}")
        return _transient(f"{type(e.reason).__name__}: {redact(e.reason)}")
    if isinstance(e, (ConnectionError, TimeoutError, http.client.HTTPException)):
        return _transient(f"{type(e).__name__}: {redact(e)}")
    s3 = _classify_s3(e, what)
    if s3 is not None:
        return s3
    if isinstance(e, FileNotFoundError):
        return RemoteNotFoundError(f"{what}: no such object")
    if isinstance(e, PermissionError):
        return RemoteAuthError(f"{what}: access refused ({type(e).__name__})")
    if isinstance(e, OSError):
        return _transient(f"{type(e).__name__}: {redact(e)}")
    return e


# ----------------------------------------------------------------------------------------------------------------------
# A stream that resumes where it broke off
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Body:
    """One response: its byte stream, the offset it starts at, the object's total size and version tag."""

    stream: Any
    start: int
    total: int | None
    tag: str | None


class _ResumingStream(io.RawIOBase):
    """A read-only byte stream over ``opener(offset) -> _Body`` that reconnects from the offset reached when the
    connection breaks (or ends early), so the reader sees every byte once. A server that ignores the range (starts
    at 0) has the bytes already read skipped; one whose object changed (other ETag) in between is an error."""

    def __init__(self, what: str, opener: Callable[[int], _Body], policy: RetryPolicy) -> None:
        super().__init__()
        self.what, self._opener, self._policy = what, opener, policy
        self._pos = 0
        self._failures = 0
        self._tag: str | None = None
        self._total: int | None = None
        self.reconnects = 0
        self._body: _Body | None = None
        self._body = self._connect()

    def readable(self) -> bool:
        return True

    def _connect(self) -> _Body:
        body = _with_retries(self.what, lambda: self._opener(self._pos), self._policy)
        if self._tag is not None and body.tag is not None and body.tag != self._tag:
            body.stream.close()
            raise RemoteError(f"{self.what} changed while it was being read (ETag {self._tag} -> {body.tag})")
        self._tag = self._tag or body.tag
        self._total = body.total if body.total is not None else self._total
        skip = self._pos - body.start
        while skip > 0:  # the server sent the object from an earlier offset: drop what was delivered already
            data = body.stream.read(min(skip, _CHUNK))
            if not data:
                raise _transient("connection closed while skipping to the resume offset")
            skip -= len(data)
        return body

    def _broke(self, err: BaseException) -> None:
        """A transient failure mid-stream: back off and reconnect at the current offset, or give up."""
        self._close_body()
        self._failures += 1
        if self._failures > self._policy.retries:
            raise RemoteError(f"{self.what}: gave up at byte {self._pos} after {self._failures} attempts: {err}")
        wait = self._policy.delay(self._failures)
        logger.warning("%s: %s at byte %d; resuming (retry %d of %d) in %.1f s", self.what, err, self._pos,
                       self._failures, self._policy.retries, wait)
        time.sleep(wait)
        self.reconnects += 1
        self._body = self._connect()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._body is None:
                raise ValueError("read from a closed stream")
            try:
                data = self._body.stream.read(len(view))
            except Exception as e:  # noqa: BLE001 - classified
                err = _classify(e, self.what)
                if not getattr(err, "transient", False):
                    raise err from None
                try:
                    self._broke(err)
                except RemoteError as final:
                    raise final from None
                continue
            if not data:
                if self._total is not None and self._pos < self._total:
                    self._broke(_transient(f"connection closed {self._total - self._pos} bytes early"))
                    continue
                return 0
            n = len(data)
            view[:n] = data
            self._pos += n
            self._failures = 0  # progress: a later break gets a fresh set of retries
            return n

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.stream.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail again
                pass
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


# ----------------------------------------------------------------------------------------------------------------------
# http(s)
# ----------------------------------------------------------------------------------------------------------------------


def _http_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user-info, and the headers that carry it (Basic auth from user-info or ~/.netrc)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "chexone"}
    user = password = None
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    else:
        try:
            auth = netrc.netrc().authenticators(parts.hostname or "")
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            auth = None
        if auth:
            user, password = auth[0], auth[2] or ""
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return url, headers


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_open(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, data: Any = None,
               timeout: float | None = None) -> http.client.HTTPResponse:
    """One request; proxies come from the environment as usual (``https_proxy``, ``no_proxy``), except for this
    machine's own addresses, which are never proxied."""
    target, base = _http_target(url)
    request = urllib.request.Request(target, data=data, method=method, headers={**base, **(headers or {})})
    host = urllib.parse.urlsplit(target).hostname
    opener = _NO_PROXY_OPENER.open if is_loopback(host) else urllib.request.urlopen
    return opener(request, timeout=timeout)


def _http_opener(url: str, policy: RetryPolicy) -> Callable[[int], _Body]:
    def open_at(offset: int) -> _Body:
        response = _http_open(url, headers={"Range": f"bytes={offset}-"} if offset else None, timeout=policy.timeout)
        start, total = (offset if response.status == 206 else 0), None
        length = response.headers.get("Content-Length")
        if response.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if m:
                start = int(m.group(1))
                total = int(m.group(2)) if m.group(2) != "*" else None
        elif length is not None:
            total = int(length)
        return _Body(response, start, total, response.headers.get("ETag"))

    return open_at


# ----------------------------------------------------------------------------------------------------------------------
# s3 (boto3, from the `remote` extra)
# ----------------------------------------------------------------------------------------------------------------------

_s3_clients: dict[tuple[int, str | None], Any] = {}
_s3_lock = threading.Lock()


def _import_boto3() -> Any:
    try:
        import boto3
        import botocore.config  # noqa: F401
    except ImportError as e:
        raise RemoteDependencyError(
            f"s3:// shards need boto3, which is not importable ({e}); install it with: pip install 'chexone[remote]'"
        ) from None
    return boto3


def s3_endpoint() -> str | None:
    """The S3 endpoint override: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2, a test
    server ...), else None (AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_client() -> Any:
    """One client per process and endpoint (boto3 clients are thread-safe but must not cross a fork). botocore's own
    retries are off: :class:`RetryPolicy` is the one policy, for S3 and HTTP alike."""
    endpoint = s3_endpoint()
    key = (os.getpid(), endpoint)
    with _s3_lock:
        client = _s3_clients.get(key)
        if client is None:
            boto3 = _import_boto3()
            from botocore.config import Config

            policy = RetryPolicy.from_env()
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=policy.timeout,
                            read_timeout=policy.timeout, user_agent_extra="chexone")
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _s3_clients[key] = client
    return client


def _s3_location(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{redact(url)}: an s3 URL is s3://BUCKET/KEY")
    return parts.netloc, parts.path.lstrip("/")


def _classify_s3(e: BaseException, what: str) -> BaseException | None:
    """botocore's exceptions, by name (botocore need not be installed for the other schemes)."""
    module = type(e).__module__ or ""
    if not module.startswith(("botocore", "boto3", "urllib3", "s3transfer")):
        return None
    name = type(e).__name__
    if name == "S3UploadFailedError" and e.__context__ is not None:  # boto3 wraps the ClientError of an upload
        return _classify_s3(e.__context__, what) or RemoteError(f"{what}: upload failed")
    if isinstance(getattr(e, "response", None), dict):  # ClientError and its generated subclasses (NoSuchKey ...)
        error = getattr(e, "response", {}).get("Error", {})
        code = str(error.get("Code", ""))
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _S3_NOT_FOUND or status == 404:
            return RemoteNotFoundError(f"{what}: no such object ({code or status})")
        if code in _S3_AUTH or status in (401, 403):
            return RemoteAuthError(f"{what}: access refused ({code or status}): check the AWS credentials "
                                   "(standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, "
                                   "instance role)")
        if code in _S3_TRANSIENT or status >= 500 or status in _TRANSIENT_STATUS:
            return _transient(f"S3 {code or status}")
        return RemoteError(f"{what}: S3 error {code or status}")
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return RemoteAuthError(f"{what}: no usable AWS credentials ({name}): set them by the standard chain "
                               "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, instance role)")
    if name in ("ParamValidationError", "InvalidEndpointConfigurationError", "NoRegionError", "UnknownEndpointError",
                "InvalidS3AddressingStyleError", "UnknownServiceError", "SSLError"):
        return RemoteError(f"{what}: {name}: {redact(e)}")
    return _transient(f"{name}")  # connection, timeout, streaming and protocol errors


def _s3_opener(url: str, policy: RetryPolicy) -> Callable[[int], _Body]:
    bucket, key = _s3_location(url)

    def open_at(offset: int) -> _Body:
        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        response = _s3_client().get_object(Bucket=bucket, Key=key, **kwargs)
        start = offset if response.get("ContentRange") else 0
        total = start + int(response.get("ContentLength", 0)) if "ContentLength" in response else None
        return _Body(response["Body"], start, total, response.get("ETag"))

    return open_at


def _s3_list(url: str, *, recursive: bool) -> list[str]:
    """Keys under the prefix of ``url`` (``s3://bucket/prefix``), as URLs; ``recursive=False`` stops at ``/``."""
    bucket, prefix = _s3_location(url)
    args = {"Bucket": bucket, "Prefix": prefix, **({} if recursive else {"Delimiter": "/"})}
    found = []
    for page in _s3_client().get_paginator("list_objects_v2").paginate(**args):
        found += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
    return found


# ----------------------------------------------------------------------------------------------------------------------
# other fsspec schemes
# ----------------------------------------------------------------------------------------------------------------------


def _fsspec(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:
        raise RemoteDependencyError(f"{redact(url)}: {scheme_of(url)}:// needs fsspec ({e}); install it with: "
                                    "pip install 'chexone[remote]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # unknown scheme, or its backend (gcsfs, adlfs ...) is not installed
        raise RemoteDependencyError(f"{redact(url)}: cannot open {scheme_of(url)}:// URLs: {e}") from None


# ----------------------------------------------------------------------------------------------------------------------
# pipe:CMD
# ----------------------------------------------------------------------------------------------------------------------


class _PipeStream(io.RawIOBase):
    """stdout of a shell command. A non-zero exit status is an error naming the command (with the end of its
    stderr) at end of stream; closing early stops the command."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        assert self._proc.stdout is not None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._proc.stdout.readinto(buffer)  # type: ignore[union-attr]
        if not n:
            status = self._proc.wait()
            if status != 0:
                self._stderr.seek(0)
                tail = self._stderr.read()[-500:].decode("utf-8", "replace").strip()
                raise RemoteError(f"pipe: command {redact(self.command)!r} exited with status {status}"
                                  + (f": {redact(tail)}" if tail else ""))
        return n or 0

    def close(self) -> None:
        if not self.closed:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc.stdout.close()  # type: ignore[union-attr]
            self._stderr.close()
        super().close()


# ----------------------------------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------------------------------


def open_stream(url: str, policy: RetryPolicy | None = None) -> IO[bytes]:
    """A binary, forward-only stream of the object at ``url`` (path, ``file://``, ``http(s)://``, ``s3://``, another
    fsspec scheme, or ``pipe:CMD``); nothing is downloaded ahead. HTTP and S3 streams resume after a broken
    connection (see :class:`RetryPolicy`). Raises RemoteNotFoundError / RemoteAuthError / RemoteError."""
    url = os.fspath(url)
    scheme = scheme_of(url)
    if scheme == "":
        return open(local_path(url), "rb")
    policy = policy or RetryPolicy.from_env()
    what = redact(url)
    if scheme == "pipe":
        return io.BufferedReader(_PipeStream(url[len("pipe:"):]), _CHUNK)
    if scheme in ("http", "https"):
        return io.BufferedReader(_ResumingStream(what, _http_opener(url, policy), policy), _CHUNK)
    if scheme == "s3":
        return io.BufferedReader(_ResumingStream(what, _s3_opener(url, policy), policy), _CHUNK)
    fs, path = _fsspec(url)
    return _with_retries(what, lambda: fs.open(path, "rb"), policy)


def read_bytes(url: str, policy: RetryPolicy | None = None) -> bytes:
    """The whole (small) object, e.g. a ``sizes.json``."""
    with open_stream(url, policy) as f:
        return f.read()


def exists(url: str, policy: RetryPolicy | None = None) -> bool:
    """Whether the object exists (False on 404 / NoSuchKey); bad credentials raise :class:`RemoteAuthError`.

    HTTP asks for the first byte with a GET rather than HEAD: a presigned GET URL refuses HEAD."""
    url = os.fspath(url)
    scheme = scheme_of(url)
    if scheme == "":
        return os.path.isfile(local_path(url))
    if scheme == "pipe":
        return True  # a command: only running it tells
    policy = policy or RetryPolicy.from_env()
    what = redact(url)

    def probe() -> bool:
        if scheme in ("http", "https"):
            try:
                _http_open(url, headers={"Range": "bytes=0-0"}, timeout=policy.timeout).close()
            except urllib.error.HTTPError as e:
                if e.code != 416:  # 416: the range is past the end of an empty object, which exists
                    raise
        elif scheme == "s3":
            bucket, key = _s3_location(url)
            _s3_client().head_object(Bucket=bucket, Key=key)
        else:
            fs, path = _fsspec(url)
            if not fs.isfile(path):
                raise FileNotFoundError(path)
        return True

    try:
        return _with_retries(what, probe, policy)
    except RemoteNotFoundError:
        return False


def missing(urls: Iterable[str], policy: RetryPolicy | None = None, workers: int = 16) -> list[str]:
    """The URLs of ``urls`` that do not exist, in order. S3 lists each prefix once (one request per 1000 keys) and
    falls back to one HEAD per object when listing is not allowed; other schemes probe in ``workers`` threads."""
    urls = list(urls)
    policy = policy or RetryPolicy.from_env()
    absent: set[str] = set()
    s3 = [u for u in urls if scheme_of(u) == "s3"]
    others = [u for u in urls if scheme_of(u) != "s3"]
    by_parent: dict[str, list[str]] = {}
    for u in s3:
        by_parent.setdefault(split_name(u)[0] + "/", []).append(u)
    for parent, group in by_parent.items():
        if len(group) < 3:
            others += group
            continue
        try:
            listed = set(_with_retries(redact(parent), lambda p=parent: _s3_list(p, recursive=False), policy))
        except RemoteAuthError:
            others += group  # ListBucket refused while GetObject may be allowed: ask object by object
            continue
        absent |= {u for u in group if u not in listed}
    if others:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(others)))) as pool:
            for u, ok in zip(others, pool.map(lambda u: exists(u, policy), others)):
                if not ok:
                    absent.add(u)
    return [u for u in urls if u in absent]


def glob(pattern: str, policy: RetryPolicy | None = None) -> list[str]:
    """Objects matching a glob (``*``, ``?``, ``[...]`` in the key), sorted, or the ``*.tar`` objects directly under a
    "directory" URL ending in ``/``. S3 and fsspec schemes only: HTTP cannot list, so give a brace pattern there."""
    pattern = os.fspath(pattern)
    scheme = scheme_of(pattern)
    policy = policy or RetryPolicy.from_env()
    what = redact(pattern)
    directory = pattern.endswith("/")
    if scheme in ("http", "https", "pipe"):
        raise ValueError(f"{what}: {scheme}: patterns cannot be listed; name the shards with a brace pattern "
                         "(shard-{000000..000099}.tar)")
    if scheme == "s3":
        bucket, key = _s3_location(pattern)
        if directory:
            keys = _with_retries(what, lambda: _s3_list(pattern, recursive=False), policy)
            return sorted(k for k in keys if k.endswith(".tar"))
        first = min((i for i, c in enumerate(key) if c in "*?["), default=len(key))
        listed = _with_retries(what, lambda: _s3_list(f"s3://{bucket}/{key[:first]}", recursive=True), policy)
        depth = key.count("/")
        return sorted(u for u in listed
                      if fnmatch.fnmatchcase(u[len(f"s3://{bucket}/"):], key)
                      and u[len(f"s3://{bucket}/"):].count("/") == depth)
    fs, path = _fsspec(pattern)
    if directory:
        names = _with_retries(what, lambda: fs.ls(path, detail=False), policy)
        return sorted(fs.unstrip_protocol(n) for n in names if str(n).endswith(".tar"))
    return sorted(fs.unstrip_protocol(p) for p in _with_retries(what, lambda: fs.glob(path), policy))


def upload_file(local: str | os.PathLike[str], url: str, policy: RetryPolicy | None = None) -> None:
    """Copy a finished local file to ``url``. S3 and HTTP PUT make the object visible only once it is complete, so a
    reader never sees half a shard; a local destination is written as ``NAME.tmp`` and renamed."""
    url = os.fspath(url)
    scheme = scheme_of(url)
    if scheme == "":
        dest = local_path(url)
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = dest + ".tmp"
        with open(local, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        os.replace(tmp, dest)
        return
    if scheme == "pipe":
        raise ValueError(f"cannot write to {redact(url)}: pipe: is for reading")
    policy = policy or RetryPolicy.from_env()
    what = redact(url)
    size = os.path.getsize(local)

    def put() -> None:
        if scheme in ("http", "https"):
            with open(local, "rb") as f:
                _http_open(url, method="PUT", data=f, timeout=policy.timeout,
                           headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"}).close()
        elif scheme == "s3":
            bucket, key = _s3_location(url)
            _s3_client().upload_file(os.fspath(local), bucket, key)
        else:
            fs, path = _fsspec(url)
            fs.put_file(os.fspath(local), path)

    _with_retries(what, put, policy)


def put_bytes(url: str, data: bytes, policy: RetryPolicy | None = None) -> None:
    """Write a small object (``sizes.json``, ``manifest.json``) in one piece."""
    with tempfile.NamedTemporaryFile(prefix="chexone-put-", delete=False) as f:
        f.write(data)
    try:
        upload_file(f.name, url, policy)
    finally:
        os.unlink(f.name)


def delete(url: str, policy: RetryPolicy | None = None) -> None:
    """Remove an object if it exists (S3, fsspec and local; HTTP sends DELETE)."""
    url = os.fspath(url)
    scheme = scheme_of(url)
    if scheme == "":
        try:
            os.unlink(local_path(url))
        except FileNotFoundError:
            pass
        return
    policy = policy or RetryPolicy.from_env()

    def remove() -> None:
        if scheme in ("http", "https"):
            _http_open(url, method="DELETE", timeout=policy.timeout).close()
        elif scheme == "s3":
            bucket, key = _s3_location(url)
            _s3_client().delete_object(Bucket=bucket, Key=key)
        else:
            fs, path = _fsspec(url)
            fs.rm_file(path)

    try:
        _with_retries(redact(url), remove, policy)
    except RemoteNotFoundError:
        pass


__all__ = [
    "RemoteAuthError",
    "RemoteDependencyError",
    "RemoteError",
    "RemoteNotFoundError",
    "RetryPolicy",
    "delete",
    "exists",
    "glob",
    "is_remote",
    "join",
    "local_path",
    "missing",
    "open_stream",
    "put_bytes",
    "read_bytes",
    "redact",
    "s3_endpoint",
    "scheme_of",
    "sibling",
    "split_name",
    "upload_file",
]
