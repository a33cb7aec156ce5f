"""The reader-study web app as a WSGI application (stdlib + Jinja2, autoescaped templates, no JavaScript framework).

A reader logs in with their id (and access code when the study gives one), then works through their own
randomised, blinded plan one item at a time: ``GET /task`` shows the next unsigned item (and starts its timer, once),
``POST /task/<item>`` signs it. Every form carries the session's CSRF token; cookies are HttpOnly and
SameSite=Strict; responses forbid framing, caching and foreign scripts. Nothing a reader types reaches a log.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2

from chexone.reader_study.auth import check_reader
from chexone.reader_study.edits import edit_stats
from chexone.reader_study.images import ImageError, ImageServer
from chexone.reader_study.plan import Assignment, reader_plan
from chexone.reader_study.store import AlreadySigned, Store
from chexone.reader_study.study import Item, Reader, Study

log = logging.getLogger("chexone.reader_study")

HERE = Path(__file__).resolve().parent
STATIC = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
SESSION_COOKIE = "rs_session"
LOGIN_COOKIE = "rs_login"
MAX_BODY = 2 * 1024 * 1024
MAX_TEXT = 100_000
MAX_ACTIVE_MS = 7 * 24 * 3600 * 1000
LOGIN_WINDOW_S, LOGIN_MAX_FAILURES = 600, 20
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
PAIRWISE_CHOICES = ("1", "2", "equal")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    cookies: dict[str, str]
    environ: dict
    _form: dict[str, str] | None = None

    @classmethod
    def from_environ(cls, environ: dict) -> "Request":
        raw = environ.get("PATH_INFO", "/") or "/"
        # WSGI gives PATH_INFO as latin-1-decoded bytes; make it the real (UTF-8) text
        try:
            path = raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            path = raw
        cookies: dict[str, str] = {}
        try:
            jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
            cookies = {k: m.value for k, m in jar.items()}
        except CookieError:
            pass
        return cls(environ.get("REQUEST_METHOD", "GET").upper(), path, cookies, environ)

    @property
    def form(self) -> dict[str, str]:
        """The url-encoded body (first value of each field); line breaks normalised to ``\\n``."""
        if self._form is None:
            ctype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise HTTPError(400, "Bad request: invalid Content-Length.") from None
            if length > MAX_BODY:
                raise HTTPError(413, "The form is too large.")
            body = self.environ["wsgi.input"].read(length) if length > 0 else b""
            if ctype not in ("application/x-www-form-urlencoded", ""):
                raise HTTPError(415, "Forms must be sent url-encoded.")
            try:
                pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
            except (UnicodeDecodeError, ValueError):
                raise HTTPError(400, "Bad request: the form could not be read.") from None
            form: dict[str, str] = {}
            for k, v in pairs:
                form.setdefault(k, v.replace("\r\n", "\n").replace("\r", "\n"))
            self._form = form
        return self._form

    @property
    def client(self) -> str:
        return self.environ.get("REMOTE_ADDR", "?")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def set_cookie(self, name: str, value: str, *, max_age: int | None = None) -> None:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.headers.append(("Set-Cookie", "; ".join(parts)))


def redirect(location: str, status: int = 303) -> Response:
    return Response(status, b"", headers=[("Location", location)])


class ReaderStudyApp:
    """``app(environ, start_response)``; ``clock`` is injectable so tests can fix time."""

    def __init__(self, study: Study, store: Store, *, clock: Callable[[], float] = time.time):
        self.study = study
        self.store = store
        self.clock = clock
        self.images = ImageServer(study)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                      autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True)
        self._failures: dict[str, list[float]] = {}
        self._fail_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- WSGI

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = Request.from_environ(environ)
        try:
            resp = self.route(req)
        except HTTPError as e:
            resp = self.error(e.status, e.message, req)
        except Exception:  # noqa: BLE001 - never a traceback to the browser; the log has it
            log.exception("internal error on %s %s", req.method, _log_path(req.path))
            resp = self.error(500, "Internal error: nothing was changed by this request. Reload the page.", req)
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body)))]
        headers += SECURITY_HEADERS + resp.headers
        reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
        start_response(f"{resp.status} {reason}", headers)
        return [b"" if req.method == "HEAD" else resp.body]

    def route(self, req: Request) -> Response:
        path, method = req.path, req.method
        get = method in ("GET", "HEAD")
        if path == "/" and get:
            return redirect("/task" if self._session(req) else "/login")
        if path == "/login" and get:
            return self.login_page(req)
        if path == "/login" and method == "POST":
            return self.login(req)
        if path == "/logout" and method == "POST":
            return self.logout(req)
        if path == "/task" and get:
            return self.task_page(req)
        if path.startswith("/task/") and method == "POST":
            return self.submit(req, path[len("/task/"):])
        if path == "/done" and get:
            return self.done_page(req)
        if path.startswith("/images/") and get:
            return self.image(req, path[len("/images/"):])
        if path.startswith("/static/") and get:
            return self.static(path[len("/static/"):])
        if path == "/healthz" and get:
            return Response(200, b"ok\n", "text/plain; charset=utf-8")
        if path in ("/", "/login", "/logout", "/task", "/done", "/healthz") or path.startswith("/task/"):
            raise HTTPError(405, "Method not allowed.")
        raise HTTPError(404, "Page not found.")

    # ---------------------------------------------------------------------------------------------- helpers

    def render(self, template: str, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("study_name", self.study.name)
        ctx.setdefault("reader", None)
        ctx.setdefault("csrf", "")
        return Response(status, self.env.get_template(template).render(**ctx).encode("utf-8"))

    def error(self, status: int, message: str, req: Request | None = None) -> Response:
        session = self._session(req) if req is not None and status != 500 else None
        return self.render("error.html", status, status_code=status, message=message,
                           reader=session[0] if session else None, csrf=session[1] if session else "")

    def _session(self, req: Request) -> tuple[Reader, str] | None:
        token = req.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        found = self.store.session(token, now=self.clock())
        if found is None:
            return None
        reader = self.study.reader(found[0])
        return None if reader is None else (reader, found[1])

    def _require(self, req: Request) -> tuple[Reader, str]:
        session = self._session(req)
        if session is None:
            raise HTTPError(401, "You are not logged in (or your session expired). Log in again; your signed "
                                 "answers are kept.")
        return session

    @staticmethod
    def _check_csrf(req: Request, expected: str) -> None:
        sent = req.form.get("csrf", "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPError(403, "The form token is missing or invalid (CSRF protection). Nothing was saved. "
                                 "Reload the page and try again.")

    def _plan(self, reader: Reader) -> list[Assignment]:
        """The reader's stored plan (made on first use), limited to items the study still has."""
        plan = self.store.ensure_plan(reader.id, reader_plan(self.study, reader.id), now=self.clock())
        return [a for a in plan if self.study.item(a.item_id) is not None]

    # ------------------------------------------------------------------------------------------------ login

    def login_page(self, req: Request, *, status: int = 200, error: str = "", reader_id: str = "") -> Response:
        if status == 200 and self._session(req):
            return redirect("/task")
        token = secrets.token_urlsafe(24)
        resp = self.render("login.html", status, login_token=token, error=error, reader_id=reader_id,
                           description=self.study.description, any_password=any(r.needs_password
                                                                                for r in self.study.readers))
        resp.set_cookie(LOGIN_COOKIE, token, max_age=3600)
        return resp

    def _too_many(self, client: str, now: float, add: bool = False) -> bool:
        with self._fail_lock:
            recent = [t for t in self._failures.get(client, []) if t > now - LOGIN_WINDOW_S]
            if add:
                recent.append(now)
            self._failures[client] = recent
            return len(recent) >= LOGIN_MAX_FAILURES

    def login(self, req: Request) -> Response:
        form = req.form
        cookie = req.cookies.get(LOGIN_COOKIE, "")
        sent = form.get("login_token", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise HTTPError(403, "The login form expired or was not sent by this site (CSRF protection). "
                                 "Open the login page again.")
        now = self.clock()
        if self._too_many(req.client, now):
            raise HTTPError(429, "Too many failed log-in attempts. Wait ten minutes and try again.")
        typed = form.get("reader_id", "").strip()
        reader = self.study.reader(typed) if typed else None
        if reader is None:
            self._too_many(req.client, now, add=True)
            msg = ("Enter your reader ID." if not typed else
                   "Unknown reader ID. Check the ID your study coordinator gave you; nothing was saved.")
            return self.login_page(req, status=400 if not typed else 403, error=msg, reader_id=typed[:64])
        if not check_reader(reader, form.get("password", "")):
            self._too_many(req.client, now, add=True)
            self.store.log_event("login_failed", reader.id, now=now)
            return self.login_page(req, status=403, error="Wrong access code for this reader ID.",
                                   reader_id=typed[:64])
        token, _ = self.store.create_session(reader.id, now=now)
        self._plan(reader)
        self.store.log_event("login", reader.id, now=now)
        resp = redirect("/task")
        resp.set_cookie(SESSION_COOKIE, token)
        resp.set_cookie(LOGIN_COOKIE, "", max_age=0)
        return resp

    def logout(self, req: Request) -> Response:
        session = self._session(req)
        if session is not None:
            self._check_csrf(req, session[1])
            self.store.end_session(req.cookies[SESSION_COOKIE])
            self.store.log_event("logout", session[0].id, now=self.clock())
        resp = redirect("/login")
        resp.set_cookie(SESSION_COOKIE, "", max_age=0)
        return resp

    # ------------------------------------------------------------------------------------------------ tasks

    def _progress(self, reader: Reader) -> tuple[list[Assignment], dict[str, float]]:
        return self._plan(reader), self.store.signed(reader.id)

    def task_page(self, req: Request) -> Response:
        reader, csrf = self._require(req)
        plan, signed = self._progress(reader)
        current = next((a for a in plan if a.item_id not in signed), None)
        if current is None:
            return redirect("/done")
        self.store.mark_shown(reader.id, current.item_id, now=self.clock())
        return self._item_page(reader, csrf, plan, signed, current)

    def _item_page(self, reader: Reader, csrf: str, plan: list[Assignment], signed: dict[str, float],
                   a: Assignment, *, status: int = 200, errors: list[str] | None = None,
                   values: dict[str, str] | None = None) -> Response:
        item = self.study.item(a.item_id)
        assert item is not None
        done = sum(1 for p in plan if p.item_id in signed)
        ctx: dict[str, Any] = dict(reader=reader, csrf=csrf, item=item, position=done + 1, total=len(plan),
                                   done=done, errors=errors or [], values=values or {},
                                   instructions=self.study.instructions[item.type],
                                   images=[(rel, urllib.parse.quote(rel)) for rel in item.images])
        model = self.study.model_text(item)
        if model is None:
            raise HTTPError(500, "This item has no model text (run the drafts command). Nothing was saved.")
        reasoning, answer = model
        if item.type == "draft_edit":
            ctx["draft"] = (values or {}).get("report", answer)
        elif item.type == "pairwise":
            reports = [answer, item.reference_report]
            ctx["reports"] = reports if a.model_first else reports[::-1]
        else:
            ctx.update(question=item.question, reasoning=reasoning, answer=answer, scales=self.study.likert)
        return self.render(f"{item.type}.html", status, **ctx)

    def submit(self, req: Request, item_id: str) -> Response:
        reader, csrf = self._require(req)
        self._check_csrf(req, csrf)
        plan, signed = self._progress(reader)
        a = next((p for p in plan if p.item_id == item_id), None)
        if a is None:
            raise HTTPError(404, "No such item in your task list. Nothing was saved.")
        item = self.study.item(item_id)
        assert item is not None
        form = req.form
        payload, errors = self._payload(item, a, form)
        if item_id in signed:  # kept in the event log, outside the answers
            self.store.log_event("resubmit_refused", reader.id, item_id, {"payload": payload}, now=self.clock())
            self._refuse(signed[item_id])
        if errors:
            values = {k: v for k, v in form.items() if k != "csrf"}
            return self._item_page(reader, csrf, plan, signed, a, status=400, errors=errors, values=values)
        try:
            self.store.save_answer(reader.id, item_id, item.type, payload, active_seconds=_active(form),
                                   now=self.clock())
        except AlreadySigned as e:  # a second tab or a double click raced the first (the store logged it)
            self._refuse(e.signed_at)
        return redirect("/task")

    @staticmethod
    def _refuse(signed_at: float) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(signed_at))
        raise HTTPError(409, f"You already signed this item ({when}). Signed answers are final: nothing was "
                             f"changed.")

    def _payload(self, item: Item, a: Assignment, form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
        """What is stored for a submission (including the texts shown, so the export needs no other file), or the
        problems to show the reader."""
        reasoning, answer = self.study.model_text(item) or ("", "")
        errors: list[str] = []
        if item.type == "draft_edit":
            report = form.get("report", "")
            if not report.strip():
                errors.append("The report is empty. Write the report you would sign.")
            elif len(report) > MAX_TEXT:
                errors.append(f"The report is longer than {MAX_TEXT} characters.")
            return {"draft": answer, "final": report, **edit_stats(answer, report)}, errors
        if item.type == "pairwise":
            choice = form.get("choice", "")
            reason = form.get("reason", "")
            if choice not in PAIRWISE_CHOICES:
                errors.append("Choose Report 1, Report 2 or Equal.")
            if not reason.strip():
                errors.append("Give a short reason for your choice.")
            elif len(reason) > MAX_TEXT:
                errors.append(f"The reason is longer than {MAX_TEXT} characters.")
            sources = ["model", item.reference_source] if a.model_first else [item.reference_source, "model"]
            preferred = {"1": sources[0], "2": sources[1], "equal": "equal"}.get(choice, "")
            texts = [answer, item.reference_report] if a.model_first else [item.reference_report, answer]
            return {"choice": choice, "preferred": preferred, "reason": reason, "model_position": 1 if a.model_first
                    else 2, "report1_source": sources[0], "report2_source": sources[1], "report1": texts[0],
                    "report2": texts[1]}, errors
        ratings: dict[str, int] = {}
        for scale in self.study.likert:
            raw = form.get(f"rate_{scale.key}", "")
            try:
                value = int(raw)
            except ValueError:
                value = None
            if value is None or not scale.min <= value <= scale.max:
                errors.append(f"Rate \u201c{scale.label}\u201d ({scale.min}-{scale.max}).")
            else:
                ratings[scale.key] = value
        comment = form.get("comment", "")
        if len(comment) > MAX_TEXT:
            errors.append(f"The comment is longer than {MAX_TEXT} characters.")
        return {"ratings": ratings, "comment": comment, "question": item.question, "reasoning": reasoning,
                "answer": answer}, errors

    def done_page(self, req: Request) -> Response:
        reader, csrf = self._require(req)
        plan, signed = self._progress(reader)
        left = sum(1 for a in plan if a.item_id not in signed)
        if left:
            return redirect("/task")
        return self.render("done.html", reader=reader, csrf=csrf, total=len(plan))

    # ------------------------------------------------------------------------------------------------ files

    def image(self, req: Request, quoted: str) -> Response:
        self._require(req)
        rel = urllib.parse.unquote(quoted)
        try:
            data, ctype = self.images.get(rel)
        except ImageError as e:
            raise HTTPError(e.status, f"Image not available: {e}.") from None
        return Response(200, data, ctype, headers=[("Content-Disposition", "inline")])

    def static(self, name: str) -> Response:
        if name not in STATIC:
            raise HTTPError(404, "Page not found.")
        return Response(200, (HERE / "static" / name).read_bytes(), STATIC[name])


def _active(form: dict[str, str]) -> float | None:
    """The client-reported active time in seconds (page visible and focused), if it was sent and is sane."""
    try:
        ms = int(form.get("active_ms", ""))
    except ValueError:
        return None
    return ms / 1000.0 if 0 <= ms <= MAX_ACTIVE_MS else None


def _log_path(path: str) -> str:
    """A request path for the log: image names (possibly patient identifiers) and item ids left out."""
    for prefix in ("/images/", "/task/"):
        if path.startswith(prefix):
            return prefix + "..."
    return html.escape(path[:64])
