"""SQLite persistence of a reader study: each reader's plan, when each item was first shown, signed answers,
sessions and an event log.

Every write is one ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``, so a signed answer is on disk when the
reader sees the next item, and a failed request leaves nothing half-written. A signed answer is final: the
``UNIQUE(reader_id, item_id)`` constraint refuses a second one (:class:`AlreadySigned`), and the refused submission is
kept in the event log instead of overwriting anything. The database remembers its study's name and refuses another.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from chexone.reader_study.plan import Assignment

SCHEMA_VERSION = 1
SESSION_IDLE_SECONDS = 12 * 3600
DEFAULT_DB_NAME = "reader_study.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    reader_id TEXT NOT NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL, model_first INTEGER,
    created_at REAL NOT NULL, PRIMARY KEY (reader_id, item_id), UNIQUE (reader_id, position));
CREATE TABLE IF NOT EXISTS views (
    reader_id TEXT NOT NULL, item_id TEXT NOT NULL, first_shown_at REAL NOT NULL, last_shown_at REAL NOT NULL,
    n_views INTEGER NOT NULL, PRIMARY KEY (reader_id, item_id));
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reader_id TEXT NOT NULL, item_id TEXT NOT NULL, item_type TEXT NOT NULL,
    first_shown_at REAL, signed_at REAL NOT NULL, seconds_to_sign REAL, active_seconds REAL,
    payload TEXT NOT NULL, UNIQUE (reader_id, item_id));
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, reader_id TEXT NOT NULL, csrf TEXT NOT NULL, created_at REAL NOT NULL,
    last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, reader_id TEXT, item_id TEXT,
    detail TEXT);
"""


class DatabaseError(ValueError):
    """A ``--db`` that cannot be used; one line, never echoing credentials of a URL."""


class AlreadySigned(Exception):
    def __init__(self, signed_at: float):
        super().__init__(f"already signed at {signed_at}")
        self.signed_at = signed_at


@dataclass(frozen=True)
class Answer:
    reader_id: str
    item_id: str
    item_type: str
    first_shown_at: float | None
    signed_at: float
    seconds_to_sign: float | None
    active_seconds: float | None
    payload: dict[str, Any]


def db_path(arg: str | None, study_path: Path) -> Path:
    """``--db``: a file path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path``; default
    ``reader_study.sqlite3`` beside the study file. Any other URL scheme is refused (only SQLite is supported)."""
    if arg is None or arg == "":
        return study_path.parent / DEFAULT_DB_NAME
    if "://" in arg or arg.lower().startswith("sqlite:"):
        scheme = arg.split(":", 1)[0].lower()
        if scheme != "sqlite":
            raise DatabaseError(f"--db: '{scheme}://' databases are not supported: only SQLite (a file path, or a "
                                f"URL sqlite:///relative/path or sqlite:////absolute/path)")
        rest = arg.split(":", 1)[1]
        if not rest.startswith("///"):
            raise DatabaseError("--db: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        path = urllib.parse.unquote(rest[3:])
        if "?" in path:
            raise DatabaseError("--db: SQLite URL options (?...) are not supported; give only the path")
        if not path or path == ":memory:":
            raise DatabaseError("--db: an in-memory database would lose every answer when the server stops; give a "
                                "file path")
        return Path(path)
    return Path(arg)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """One SQLite file; safe to share between the server's threads (one connection behind a lock)."""

    def __init__(self, path: str | Path, study_name: str, *, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            if not create or readonly:
                raise DatabaseError(f"{self.path}: no such database (the server writes it; check --db)")
            if not self.path.parent.is_dir():
                raise DatabaseError(f"{self.path}: directory {self.path.parent} does not exist")
        try:
            if readonly:
                self._conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30,
                                             isolation_level=None, check_same_thread=False)
            else:
                self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                             check_same_thread=False)
            self._conn.execute("PRAGMA synchronous=FULL")
            if not readonly:
                self._conn.executescript(SCHEMA)
            self._check_meta(study_name, readonly)
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{self.path}: not a usable SQLite database ({e})") from None
        self._lock = threading.RLock()

    def _check_meta(self, study_name: str, readonly: bool) -> None:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            raise DatabaseError(f"{self.path}: not a reader-study database") from None
        if not meta:
            if readonly:
                raise DatabaseError(f"{self.path}: empty reader-study database")
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                   [("schema_version", str(SCHEMA_VERSION)), ("study", study_name),
                                    ("created_at", str(time.time()))])
            self._conn.execute("COMMIT")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise DatabaseError(f"{self.path}: database schema {meta.get('schema_version')} (this version reads "
                                f"{SCHEMA_VERSION})")
        if meta.get("study") != study_name:
            raise DatabaseError(f"{self.path}: this database belongs to study '{meta.get('study')}', not "
                                f"'{study_name}'; give another --db")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it or none of it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def log_event(self, kind: str, reader_id: str | None = None, item_id: str | None = None,
                  detail: dict | None = None, *, now: float | None = None) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO events (at, kind, reader_id, item_id, detail) VALUES (?, ?, ?, ?, ?)",
                      (now or time.time(), kind, reader_id, item_id,
                       json.dumps(detail, ensure_ascii=False) if detail else None))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self._read("SELECT at, kind, reader_id, item_id, detail FROM events" +
                          (" WHERE kind = ?" if kind else "") + " ORDER BY id", (kind,) if kind else ())
        return [{"at": r[0], "kind": r[1], "reader_id": r[2], "item_id": r[3],
                 "detail": json.loads(r[4]) if r[4] else None} for r in rows]

    # ---------------------------------------------------------------------------------------------- sessions

    def create_session(self, reader_id: str, *, now: float | None = None) -> tuple[str, str]:
        """A new (session token, CSRF token); the database keeps only the token's hash."""
        now = now or time.time()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE last_seen < ?", (now - SESSION_IDLE_SECONDS,))
            c.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (_hash_token(token), reader_id, csrf, now, now))
        return token, csrf

    def session(self, token: str, *, now: float | None = None) -> tuple[str, str] | None:
        """(reader id, CSRF token) of a live session, or None."""
        now = now or time.time()
        with self._tx() as c:
            row = c.execute("SELECT reader_id, csrf, last_seen FROM sessions WHERE token_hash = ?",
                            (_hash_token(token),)).fetchone()
            if row is None:
                return None
            if row[2] < now - SESSION_IDLE_SECONDS:
                c.execute("DELETE FROM sessions WHERE token_hash = ?", (_hash_token(token),))
                return None
            c.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (now, _hash_token(token)))
        return row[0], row[1]

    def end_session(self, token: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (_hash_token(token),))

    # -------------------------------------------------------------------------------------------------- plans

    def plan(self, reader_id: str) -> list[Assignment]:
        rows = self._read("SELECT item_id, model_first FROM assignments WHERE reader_id = ? ORDER BY position",
                          (reader_id,))
        return [Assignment(r[0], None if r[1] is None else bool(r[1])) for r in rows]

    def ensure_plan(self, reader_id: str, fresh: list[Assignment], *, now: float | None = None) -> list[Assignment]:
        """The stored plan, created from ``fresh`` on first use; items new to the study are appended in ``fresh``'s
        order, so a reader's earlier order and pairwise sides never change."""
        now = now or time.time()
        with self._tx() as c:
            rows = c.execute("SELECT item_id, position FROM assignments WHERE reader_id = ?", (reader_id,)).fetchall()
            have = {r[0] for r in rows}
            pos = max((r[1] for r in rows), default=-1) + 1
            for a in fresh:
                if a.item_id not in have:
                    c.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?)",
                              (reader_id, pos, a.item_id, None if a.model_first is None else int(a.model_first), now))
                    pos += 1
        return self.plan(reader_id)

    # -------------------------------------------------------------------------------------------------- views

    def mark_shown(self, reader_id: str, item_id: str, *, now: float | None = None) -> float:
        """Record a display; returns when the item was first shown to this reader (the timer's start)."""
        now = now or time.time()
        with self._tx() as c:
            c.execute("INSERT INTO views VALUES (?, ?, ?, ?, 1) ON CONFLICT (reader_id, item_id) DO UPDATE SET "
                      "last_shown_at = excluded.last_shown_at, n_views = n_views + 1", (reader_id, item_id, now, now))
            return c.execute("SELECT first_shown_at FROM views WHERE reader_id = ? AND item_id = ?",
                             (reader_id, item_id)).fetchone()[0]

    def views(self) -> dict[tuple[str, str], tuple[float, int]]:
        return {(r[0], r[1]): (r[2], r[3]) for r in
                self._read("SELECT reader_id, item_id, first_shown_at, n_views FROM views")}

    # ------------------------------------------------------------------------------------------------ answers

    def signed(self, reader_id: str) -> dict[str, float]:
        """item id -> signed_at of the reader's signed items."""
        return dict(self._read("SELECT item_id, signed_at FROM answers WHERE reader_id = ?", (reader_id,)))

    def save_answer(self, reader_id: str, item_id: str, item_type: str, payload: dict[str, Any], *,
                    active_seconds: float | None = None, now: float | None = None) -> Answer:
        """Store a signed answer; :class:`AlreadySigned` (nothing changed, the attempt logged) if one exists."""
        now = now or time.time()
        with self._tx() as c:
            row = c.execute("SELECT signed_at FROM answers WHERE reader_id = ? AND item_id = ?",
                            (reader_id, item_id)).fetchone()
            if row is None:
                shown = c.execute("SELECT first_shown_at FROM views WHERE reader_id = ? AND item_id = ?",
                                  (reader_id, item_id)).fetchone()
                first = shown[0] if shown else None
                seconds = None if first is None else max(0.0, now - first)
                c.execute("INSERT INTO answers (reader_id, item_id, item_type, first_shown_at, signed_at, "
                          "seconds_to_sign, active_seconds, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (reader_id, item_id, item_type, first, now, seconds, active_seconds,
                           json.dumps(payload, ensure_ascii=False)))
                c.execute("INSERT INTO events (at, kind, reader_id, item_id) VALUES (?, 'sign', ?, ?)",
                          (now, reader_id, item_id))
                return Answer(reader_id, item_id, item_type, first, now, seconds, active_seconds, payload)
        # refused: keep what was sent in the event log, outside the answers
        self.log_event("resubmit_refused", reader_id, item_id, {"payload": payload}, now=now)
        raise AlreadySigned(row[0])

    def answers(self, reader_id: str | None = None) -> list[Answer]:
        sql = ("SELECT reader_id, item_id, item_type, first_shown_at, signed_at, seconds_to_sign, active_seconds, "
               "payload FROM answers")
        rows = self._read(sql + (" WHERE reader_id = ?" if reader_id else "") + " ORDER BY id",
                          (reader_id,) if reader_id else ())
        return [Answer(*r[:7], json.loads(r[7])) for r in rows]

    def answer(self, reader_id: str, item_id: str) -> Answer | None:
        return next((a for a in self.answers(reader_id) if a.item_id == item_id), None)

    def all_plans(self) -> dict[str, list[Assignment]]:
        out: dict[str, list[Assignment]] = {}
        for rid, iid, mf in self._read("SELECT reader_id, item_id, model_first FROM assignments "
                                       "ORDER BY reader_id, position"):
            out.setdefault(rid, []).append(Assignment(iid, None if mf is None else bool(mf)))
        return out
