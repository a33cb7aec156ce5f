"""Shards over HTTP, S3 and pipe: read through the real datasets from real local servers, compared with local reads.

The servers are real and local: a threaded HTTP server on 127.0.0.1 (Range requests, PUT, a mode that cuts the
connection at a byte offset, forced statuses, a token / Basic-auth check) serving a demo shard directory written by
the demo builder, and moto's S3 server (ThreadedMotoServer) on 127.0.0.1, filled with boto3 directly (not with our
writer), with credential checking switched on for the bad-credentials test. References are the local reads of the
same files (and, for the writers, the local writer's bytes: the format is byte-for-byte deterministic).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch

from chexone.data import remote
from chexone.data.shards import (
    ShardAccessError,
    build_eval_dataset,
    build_train_dataset,
    expand_shards,
    resolve_shard_sets,
)
from conftest import tiny_demo_overrides

TRAIN = "train/demo-train-{000000..000001}.tar"
VAL = "val/demo-val-{000000..000001}.tar"
TOKEN, PASSWORD = "s3cr3t-T0KEN", "pa55-w0rd"
BUCKET = "chexone-shards"


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: demo shards, an HTTP server, an S3 server
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo set from the demo builder: train 2 shards x 24 samples, val 2 x 6 (+ sizes.json each)."""
    from chexone.data.demo import write_demo_splits

    root = tmp_path_factory.mktemp("remote-demo")
    write_demo_splits(root, sizes={"train": 48, "val": 12, "test": 1}, seed=0)
    return root


@pytest.fixture(autouse=True, scope="module")
def fast_retries():
    """Short backoff so that retry tests take milliseconds; restored after the module."""
    keys = {"CHEXONE_REMOTE_BACKOFF": "0.01", "CHEXONE_REMOTE_MAX_BACKOFF": "0.05", "CHEXONE_REMOTE_TIMEOUT": "20",
            "CHEXONE_REMOTE_RETRIES": "4"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    yield
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _target(self) -> tuple[str, dict]:
        parts = urlsplit(self.path)
        rel = unquote(parts.path).lstrip("/")
        srv = self.server
        srv.requests.append({"method": self.command, "path": rel, "range": self.headers.get("Range"),
                             "query": parts.query})
        return rel, parse_qs(parts.query)

    def _refused(self, query: dict) -> bool:
        need = self.server.require
        if need.get("token") and query.get("token") != [need["token"]]:
            self.send_error(403, "bad token")
            return True
        if need.get("basic"):
            expected = "Basic " + base64.b64encode(need["basic"].encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_error(401, "bad credentials")
                return True
        return False

    def do_GET(self):
        rel, query = self._target()
        rule = self.server.rules.get(rel, {})
        if "status" in rule:
            self.send_error(rule["status"])
            return
        if self._refused(query):
            return
        file = self.server.root / rel
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start, status = 0, 200
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.send_error(416)
                return
            body, status = data[start:end + 1], 206
        else:
            body = data
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.end_headers()
        cut = rule.get("cut_at")  # absolute byte offset where the connection is dropped (rule["times"] times)
        if cut is not None and rule.get("times", 0) > 0 and start <= cut < start + len(body):
            rule["times"] -= 1
            self.wfile.write(body[:cut - start])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def do_PUT(self):
        rel, query = self._target()
        if self._refused(query):
            return
        data = self.rfile.read(int(self.headers["Content-Length"]))
        (self.server.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.server.root / rel).write_bytes(data)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self):
        rel, _ = self._target()
        (self.server.root / rel).unlink(missing_ok=True)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def http_server(demo_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.root, server.rules, server.requests, server.require = demo_dir, {}, [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def http(http_server):
    """The HTTP server with its rules, request log and auth requirement reset for each test."""
    http_server.rules.clear()
    http_server.requests.clear()
    http_server.require.clear()
    yield http_server
    http_server.rules.clear()
    http_server.require.clear()


@pytest.fixture(scope="module")
def s3(demo_dir, tmp_path_factory):
    """moto's S3 server on 127.0.0.1 as the endpoint (AWS_ENDPOINT_URL_S3), the demo set uploaded by boto3 itself."""
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    none = tmp_path_factory.mktemp("no-aws-config") / "none"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_CONFIG_FILE": str(none), "AWS_SHARED_CREDENTIALS_FILE": str(none)}
    old = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"]}
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(k, None)
    os.environ.update(env)
    remote._s3_clients.clear()
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(demo_dir.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"demo/{path.relative_to(demo_dir).as_posix()}",
                              Body=path.read_bytes())
    yield SimpleNamespace(endpoint=endpoint, client=client, url=f"s3://{BUCKET}/demo")
    server.stop()
    remote._s3_clients.clear()
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def samples_of(dataset) -> list[tuple[str, str, list[bytes]]]:
    """What a read produced: id, answer and the decoded pixels of every image, in order."""
    return [(s.id, s.answer, [im.tobytes() for im in s.images]) for s in dataset]


def local_eval(demo_dir, pattern=VAL):
    return samples_of(build_eval_dataset(str(demo_dir / pattern), max_skip_fraction=0.0))


# ----------------------------------------------------------------------------------------------------------------------
# Names and redaction
# ----------------------------------------------------------------------------------------------------------------------


def test_redact_hides_userinfo_and_query_values():
    url = f"https://alice:{PASSWORD}@data.example.org/s/train-000001.tar?token={TOKEN}&X-Amz-Signature=abc123"
    shown = remote.redact(url)
    assert shown == "https://***@data.example.org/s/train-000001.tar?token=***&X-Amz-Signature=***"
    cmd = f"pipe:curl -s 'https://bob:{PASSWORD}@h/x.tar?sig={TOKEN}'"
    assert PASSWORD not in remote.redact(cmd) and TOKEN not in remote.redact(cmd)
    assert remote.redact("/data/shards/train-000000.tar") == "/data/shards/train-000000.tar"
    assert remote.sibling(f"https://h/d/x.tar?token={TOKEN}", "sizes.json") == f"https://h/d/sizes.json?token={TOKEN}"
    assert remote.split_name("s3://b/a/x.tar") == ("s3://b/a", "x.tar")
    assert [remote.scheme_of(u) for u in ("/x", "file:///x", "pipe:cat x", "HTTPS://h/x", "gs://b/x")] == \
        ["", "", "pipe", "https", "gs"]


def test_retry_policy_backs_off_exponentially_with_jitter_and_a_cap(monkeypatch):
    policy = remote.RetryPolicy(retries=5, backoff=0.5, max_backoff=3.0)
    for failure, full in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):  # 0.5 * 2**(n-1), capped at 3
        waits = [policy.delay(failure) for _ in range(200)]
        assert all(full / 2 <= w < full for w in waits) and max(waits) - min(waits) > full / 10, failure
    monkeypatch.setenv("CHEXONE_REMOTE_RETRIES", "7")
    monkeypatch.setenv("CHEXONE_REMOTE_TIMEOUT", "0")
    assert remote.RetryPolicy.from_env().retries == 7 and remote.RetryPolicy.from_env().timeout is None
    monkeypatch.setenv("CHEXONE_REMOTE_BACKOFF", "soon")
    with pytest.raises(ValueError, match="CHEXONE_REMOTE_BACKOFF='soon' is not a number"):
        remote.RetryPolicy.from_env()


# ----------------------------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------------------------


def test_http_reads_the_same_samples_as_local_files(demo_dir, http):
    url = f"{http.url}/{VAL}"
    sets = resolve_shard_sets(url)
    assert sets[0].shards == [f"{http.url}/val/demo-val-00000{i}.tar" for i in range(2)]
    local_sizes = json.loads((demo_dir / "val" / "sizes.json").read_text())
    assert list(sets[0].sizes.values()) == list(local_sizes.values())  # sizes.json read over HTTP
    got = build_eval_dataset(url, max_skip_fraction=0.0)
    assert samples_of(got) == local_eval(demo_dir)
    assert got.skip_stats().skipped == 0
    # training stream: the epoch length comes from the remote sizes.json; same seed, same samples as locally
    remote_ids = [s.id for s in build_train_dataset(f"{http.url}/{TRAIN}", samples_per_epoch=None, seed=3,
                                                    shuffle_buffer=8)]
    local_ids = [s.id for s in build_train_dataset(str(demo_dir / TRAIN), samples_per_epoch=None, seed=3,
                                                   shuffle_buffer=8)]
    assert remote_ids == local_ids and len(local_ids) == 48


def test_http_connection_dropped_mid_shard_resumes_without_loss_or_duplicates(demo_dir, http, caplog):
    http.require.update(token=TOKEN, basic=f"reader:{PASSWORD}")
    size = (demo_dir / "val" / "demo-val-000000.tar").stat().st_size
    cut = size // 2 + 17
    http.rules["val/demo-val-000000.tar"] = {"cut_at": cut, "times": 1}
    host = http.url.removeprefix("http://")
    url = f"http://reader:{PASSWORD}@{host}/{VAL}?token={TOKEN}"
    with caplog.at_level(logging.WARNING):
        ds = build_eval_dataset(url, max_skip_fraction=0.0)
        got = samples_of(ds)
    assert got == local_eval(demo_dir)  # every sample once, in order
    assert ds.skip_stats().skipped == 0
    gets = [r for r in http.requests if r["method"] == "GET" and r["path"] == "val/demo-val-000000.tar"]
    assert [r["range"] for r in gets][-2:] == [None, f"bytes={cut}-"]  # resumed exactly at the byte reached
    assert any("resuming" in r.getMessage() for r in caplog.records)
    text = caplog.text
    assert TOKEN not in text and PASSWORD not in text and "token=***" in text


def test_http_retries_spent_skip_the_rest_of_the_shard_and_count_it(demo_dir, http, caplog, monkeypatch):
    monkeypatch.setenv("CHEXONE_REMOTE_RETRIES", "2")
    size = (demo_dir / "val" / "demo-val-000000.tar").stat().st_size
    url = f"{http.url}/{VAL}?token={TOKEN}"
    ds = build_eval_dataset(url, max_skip_fraction=1.0)
    # the server now cuts shard 0 at the same byte on every attempt (no progress) and refuses shard 1 with 503
    http.rules["val/demo-val-000000.tar"] = {"cut_at": size // 2, "times": 99}
    http.rules["val/demo-val-000001.tar"] = {"status": 503}
    with caplog.at_level(logging.WARNING):
        got = samples_of(ds)
    reference = local_eval(demo_dir)
    stats = ds.skip_stats()
    first_shard = json.loads((demo_dir / "val" / "sizes.json").read_text())["demo-val-000000.tar"]
    assert 1 <= len(got) < first_shard and got == reference[:len(got)]  # what came before the cut, nothing twice
    assert stats.by_reason["truncated_tar"] == first_shard - len(got)  # the rest of shard 0
    assert stats.by_reason["unreadable_shard"] == len(reference) - first_shard  # all of shard 1 (its sizes.json)
    attempts = [r for r in http.requests if r["path"] == "val/demo-val-000001.tar" and r["range"] != "bytes=0-0"]
    assert len(attempts) == 3  # the first try + 2 retries (the earlier "bytes=0-0" was the existence check)
    assert "gave up" in caplog.text and "demo-val-000001.tar?token=***" in caplog.text and TOKEN not in caplog.text


def test_http_missing_shard_and_refused_credentials_are_clear_errors(demo_dir, http):
    from chexone.training.preflight import shard_problems

    with pytest.raises(FileNotFoundError, match=r"1 of 3 shard file\(s\) do not exist: .*demo-val-000002.tar"):
        expand_shards(f"{http.url}/val/demo-val-{{000000..000002}}.tar?token={TOKEN}")
    problems = shard_problems("data.val", [SimpleNamespace(path=f"{http.url}/val/nope-{{0..1}}.tar?token={TOKEN}",
                                                           weight=1.0)])
    assert len(problems) == 1 and problems[0].startswith("'data.val[0].path': ") and TOKEN not in problems[0]
    http.require.update(token="another-token")
    with pytest.raises(remote.RemoteAuthError, match=r"access refused \(HTTP 403") as err:
        expand_shards(f"{http.url}/{VAL}?token={TOKEN}")
    assert "demo-val-000000.tar?token=***" in str(err.value) and TOKEN not in str(err.value)
    # credentials refused while reading (the run had started): an error naming the object, not a skip
    http.require.clear()
    ds = build_eval_dataset(f"{http.url}/{VAL}", max_skip_fraction=1.0)
    http.require.update(basic=f"reader:{PASSWORD}")
    with pytest.raises(ShardAccessError, match=r"demo-val-000000.tar: access refused \(HTTP 401"):
        list(ds)  # a ShardDataError: the CLI prints it as one line and exits 1


def test_http_put_writer_matches_the_local_writer_bytes(demo_dir, http, tmp_path):
    from chexone.data.demo.generate import demo_samples
    from webdata.writer import ShardWriter

    samples = list(demo_samples("val", 7, seed=1))
    with ShardWriter(tmp_path / "local", prefix="put", max_samples_per_shard=3) as local:
        for s in samples:
            local.write(s)
    with ShardWriter(f"{http.url}/uploads/set", prefix="put", max_samples_per_shard=3) as up:
        for s in samples:
            up.write(s)
    assert up.pattern == f"{http.url}/uploads/set/put-{{000000..000002}}.tar"
    for name in [*local.shard_names, "sizes.json"]:
        assert (demo_dir / "uploads" / "set" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    puts = [r["path"].rsplit("/", 1)[1] for r in http.requests if r["method"] == "PUT"]
    assert puts[-2:] == ["sizes.json", "manifest.json"]  # the set is announced only once every shard is there
    with pytest.raises(FileExistsError, match="already holds a shard set"):
        ShardWriter(f"{http.url}/uploads/set", prefix="put")


# ----------------------------------------------------------------------------------------------------------------------
# pipe: and other fsspec schemes
# ----------------------------------------------------------------------------------------------------------------------


def test_pipe_cat_reads_the_same_samples_and_a_failing_command_is_counted(demo_dir, caplog):
    pattern = f"pipe:cat {demo_dir}/{VAL}"
    assert samples_of(build_eval_dataset(pattern, max_skip_fraction=0.0)) == local_eval(demo_dir)
    ds = build_eval_dataset(f"pipe:cat {demo_dir}/val/absent-{{0..1}}.tar", max_skip_fraction=1.0)
    with caplog.at_level(logging.WARNING):
        assert list(ds) == []
    assert ds.skip_stats().by_reason == {"unreadable_shard": 2}  # no sizes.json for a command: 1 lost per shard
    assert f"pipe: command 'cat {demo_dir}/val/absent-0.tar' exited with status 1" in caplog.text


def test_fsspec_memory_scheme(demo_dir):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for path in (demo_dir / "val").iterdir():
        fs.pipe(f"/remote-test/val/{path.name}", path.read_bytes())
    try:
        for pattern in (f"memory://remote-test/{VAL}", "memory://remote-test/val/", "memory://remote-test/val/*.tar"):
            sets = resolve_shard_sets(pattern)
            assert len(sets[0].shards) == 2 and sets[0].num_samples == 12, pattern
            assert samples_of(build_eval_dataset(pattern, max_skip_fraction=0.0)) == local_eval(demo_dir), pattern
    finally:
        fs.rm("/remote-test", recursive=True)


# ----------------------------------------------------------------------------------------------------------------------
# S3 (moto's server)
# ----------------------------------------------------------------------------------------------------------------------


def test_s3_brace_glob_and_prefix_read_the_same_samples_as_local(demo_dir, s3):
    reference = local_eval(demo_dir)
    for pattern in (f"{s3.url}/{VAL}", f"{s3.url}/val/demo-val-*.tar", f"{s3.url}/val/"):
        sets = resolve_shard_sets(pattern)
        assert sets[0].shards == [f"{s3.url}/val/demo-val-00000{i}.tar" for i in range(2)], pattern
        assert sets[0].num_samples == 12, pattern  # sizes.json read from the bucket
        assert samples_of(build_eval_dataset(pattern, max_skip_fraction=0.0)) == reference, pattern
    ids = [s.id for s in build_train_dataset(f"{s3.url}/{TRAIN}", samples_per_epoch=None, seed=5, shuffle_buffer=8)]
    assert ids == [s.id for s in build_train_dataset(str(demo_dir / TRAIN), samples_per_epoch=None, seed=5,
                                                     shuffle_buffer=8)]


def test_s3_stream_broken_mid_object_resumes_at_the_offset(demo_dir, s3, monkeypatch):
    """botocore's body raises a streaming error once, half-way: the stream re-requests ``Range: bytes=N-``."""
    from botocore.exceptions import ResponseStreamingError
    from botocore.response import StreamingBody

    real_read, state = StreamingBody.read, {"delivered": 0, "broken": False, "ranges": []}
    size = (demo_dir / "val" / "demo-val-000001.tar").stat().st_size

    def flaky_read(self, amt=None):
        data = real_read(self, amt)
        state["delivered"] += len(data)
        if not state["broken"] and state["delivered"] > size // 2:
            state["broken"] = True
            raise ResponseStreamingError(error="connection reset by peer")
        return data

    real_get = remote._s3_client().get_object

    def get_object(**kwargs):
        state["ranges"].append(kwargs.get("Range"))
        return real_get(**kwargs)

    monkeypatch.setattr(StreamingBody, "read", flaky_read)
    monkeypatch.setattr(remote._s3_client(), "get_object", get_object)
    url = f"{s3.url}/val/demo-val-000001.tar"
    with remote.open_stream(url) as f:
        data = f.read()
    assert data == (demo_dir / "val" / "demo-val-000001.tar").read_bytes()
    assert state["broken"] and len(state["ranges"]) == 2 and state["ranges"][0] is None
    assert re.fullmatch(r"bytes=\d+-", state["ranges"][1]) and 0 < int(state["ranges"][1][6:-1]) < size


def test_s3_missing_object_and_bad_credentials(demo_dir, s3):
    def moto_auth(after: bytes) -> None:  # moto checks credentials after this many requests ("inf": never)
        request = urllib.request.Request(f"{s3.endpoint}/moto-api/reset-auth", data=after,
                                         headers={"Content-Type": "text/plain"})  # not a form: moto reads the body
        urllib.request.urlopen(request, timeout=10).close()

    with pytest.raises(FileNotFoundError, match=r"1 of 3 shard file\(s\) do not exist: 's3://.*demo-val-000002.tar'"):
        expand_shards(f"{s3.url}/val/demo-val-{{000000..000002}}.tar")
    with pytest.raises(remote.RemoteNotFoundError, match="no such object"):
        remote.open_stream(f"s3://{BUCKET}/demo/val/none.tar")
    ds = build_eval_dataset(f"{s3.url}/{VAL}", max_skip_fraction=1.0)
    # switch moto's credential checking on: the key "testing" is unknown to it, as a wrong key is to AWS
    moto_auth(b"0")
    try:
        with pytest.raises(remote.RemoteAuthError, match=r"access refused \(403\)") as err:  # HEAD: no error code
            expand_shards(f"{s3.url}/{VAL}")
        assert "s3://chexone-shards/demo/val/" in str(err.value) and "testing" not in str(err.value)
        with pytest.raises(ShardAccessError, match=r"demo-val-000000.tar: access refused \(InvalidAccessKeyId"):
            list(ds)  # while reading: an error, never a skip
    finally:
        moto_auth(b"inf")


def test_s3_missing_client_library_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_boto3(name, *args, **kwargs):
        if name.split(".")[0] in ("boto3", "botocore"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto3)
    monkeypatch.setattr(remote, "_s3_clients", {})
    with pytest.raises(ImportError, match=r"pip install 'chexone\[remote\]'"):
        expand_shards(f"s3://{BUCKET}/x/shard-{{0..1}}.tar")


def test_s3_writer_and_builder_write_what_the_local_ones_write(demo_dir, s3, tmp_path, capsys):
    import numpy as np

    from chexone.data.demo.generate import demo_samples
    from webdata import build as B
    from webdata.synthetic import write_png
    from webdata.writer import ShardWriter

    def objects(prefix: str) -> dict[str, bytes]:
        listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {o["Key"][len(prefix):]: s3.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
                for o in listed}

    samples = list(demo_samples("train", 9, seed=2))
    with ShardWriter(tmp_path / "local", prefix="w", max_samples_per_shard=4) as local:
        for s in samples:
            local.write(s)
    with ShardWriter(f"s3://{BUCKET}/written", prefix="w", max_samples_per_shard=4) as up:
        for s in samples:
            up.write(s)
    got = objects("written/")
    assert sorted(got) == ["manifest.json", "sizes.json", "w-000000.tar", "w-000001.tar", "w-000002.tar"]
    for name in [*local.shard_names, "sizes.json"]:
        assert got[name] == (tmp_path / "local" / name).read_bytes(), name
    assert not Path(up.out_dir).exists()  # the local staging of the remote writer is gone

    # python -m webdata.build ... --out s3://...: the same shards, sizes.json and manifest as a local build
    write_png(tmp_path / "img" / "a.png", np.full((30, 40), 200, np.uint8))
    write_png(tmp_path / "img" / "b.png", np.full((20, 20), 60, np.uint8))
    records = [{"id": f"r{i}", "task": "open_vqa", "question": f"Q{i}?", "answer": f"A{i}",
                "images": ["a.png" if i % 2 else "b.png"]} for i in range(5)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["jsonl", "--input", str(tmp_path / "in.jsonl"), "--images", str(tmp_path / "img"), "--shard-size", "2",
              "--no-progress", "--workers", "1"]
    assert B.main([*common, "--out", str(tmp_path / "built" / "set")]) == 0
    staging = tmp_path / "staging"
    assert B.main([*common, "--out", f"s3://{BUCKET}/builds/set", "--staging", str(staging)]) == 0
    built = objects("builds/set/")
    local_dir = tmp_path / "built" / "set"
    assert sorted(built) == sorted(p.name for p in local_dir.iterdir())
    assert {"set-000000.tar", "set-000001.tar", "sizes.json", "skipped.jsonl"} <= set(built)
    for name in set(built) - {"manifest.json"}:
        assert built[name] == (local_dir / name).read_bytes(), name
    assert json.loads(built["manifest.json"])["fingerprint"] == \
        json.loads((local_dir / "manifest.json").read_text())["fingerprint"]
    assert not staging.exists()
    capsys.readouterr()
    assert B.main([*common, "--out", f"s3://{BUCKET}/builds/set"]) == 0  # same arguments: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    over_s3 = samples_of(build_eval_dataset(f"s3://{BUCKET}/builds/set/", max_skip_fraction=0.0))
    assert over_s3 == samples_of(build_eval_dataset(str(local_dir), max_skip_fraction=0.0))
    assert sorted(i for i, _, _ in over_s3) == [f"r{i}" for i in range(5)]
    changed = [*common, "--no-group-images"]
    changed[changed.index("--shard-size") + 1] = "5"  # one shard of 5 samples instead of two
    assert B.main([*changed, "--out", f"s3://{BUCKET}/builds/set"]) == 2  # other arguments: refused
    assert "--overwrite" in capsys.readouterr().err
    assert B.main([*changed, "--out", f"s3://{BUCKET}/builds/set", "--overwrite"]) == 0
    rebuilt = objects("builds/set/")
    assert sorted(k for k in rebuilt if k.endswith(".tar")) == ["set-000000.tar"]  # the old second shard is gone
    assert json.loads(rebuilt["sizes.json"]) == {"set-000000.tar": 5}


# ----------------------------------------------------------------------------------------------------------------------
# The demo fit: the same steps from local, HTTP and S3 shards
# ----------------------------------------------------------------------------------------------------------------------


def test_sft_steps_from_http_and_s3_equal_those_from_local_shards(demo_dir, http, s3, tmp_path, cache_dir, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    def fit(name: str, train: str) -> tuple[dict, dict]:
        out = tmp_path / name
        result = run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
            "trainer.max_steps": 2, "data.val": "[]", "export_hf": "false", "data.train": train,
            "data.shuffle_buffer": 8, "model.tiny_cache_dir": cache_dir / "tiny-model"})), announce=False)
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return result, ckpt["state_dict"]

    local, local_sd = fit("local", str(demo_dir / TRAIN))
    over_http, http_sd = fit("http", f"{http.url}/{TRAIN}")
    over_s3, s3_sd = fit("s3", f"{s3.url}/{TRAIN}")
    assert local["global_step"] == over_http["global_step"] == over_s3["global_step"] == 2
    loss = local["metrics"]["train/loss"]
    assert loss == over_http["metrics"]["train/loss"] == over_s3["metrics"]["train/loss"] and loss > 0
    assert [r["metrics"]["data/skipped"] for r in (local, over_http, over_s3)] == [0, 0, 0]
    assert local_sd.keys() == http_sd.keys() == s3_sd.keys()
    for key in local_sd:
        assert torch.equal(local_sd[key], http_sd[key]) and torch.equal(local_sd[key], s3_sd[key]), key
    # and the steps did train: the weights moved from the tiny model's initial ones
    from transformers import AutoModelForImageTextToText

    initial = AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    trained = {k.removeprefix("model."): v for k, v in local_sd.items()}
    common = [k for k in trained if k in initial]
    assert common and any(not torch.equal(initial[k].to(trained[k].dtype), trained[k]) for k in common)
    served = {r["path"] for r in http.requests if r["method"] == "GET"}
    assert {"train/demo-train-000000.tar", "train/sizes.json"} <= served


def test_urllib_reaches_the_loopback_server_without_a_proxy(http, monkeypatch):
    """A proxy set in the environment is not used for this machine's own addresses (the test server)."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("no_proxy", "")
    assert remote.exists(f"{http.url}/val/sizes.json")
