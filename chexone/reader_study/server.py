"""Running the app: a threading ``wsgiref`` server bound to 127.0.0.1 unless told otherwise, with a request log that
holds method, route and status only (no image names, item ids, form fields or cookies), and a clean stop on Ctrl-C or
SIGTERM (every signed answer is already committed)."""

from __future__ import annotations

import signal
import socketserver
import sys
import threading
from typing import TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from chexone.hosts import is_loopback
from chexone.reader_study.app import ReaderStudyApp, _log_path


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    """One short line per request on stderr, without anything that could identify a patient or a reader's text."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        method, _, rest = (self.requestline or "").partition(" ")
        path = rest.rsplit(" ", 1)[0].split("?", 1)[0]
        if path.startswith("/static/") or path == "/healthz":
            return
        sys.stderr.write(f"{self.log_date_time_string()} {method} {_log_path(path)} {code}\n")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        text = format % args
        if text.startswith("code "):  # "code 400, message Bad request syntax ('GET /images/...')": status only
            text = text.split(",", 1)[0]
        sys.stderr.write(f"{self.log_date_time_string()} {text[:200]}\n")


class SilentHandler(QuietHandler):
    """No request log at all (embedding the app, tests)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def make(app: ReaderStudyApp, host: str = "127.0.0.1", port: int = 8080, *, log: bool = True) -> ThreadingWSGIServer:
    return make_server(host, port, app, server_class=ThreadingWSGIServer,
                       handler_class=QuietHandler if log else SilentHandler)


def serve(app: ReaderStudyApp, host: str = "127.0.0.1", port: int = 8080, *, out: TextIO | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM."""
    out = out or sys.stdout
    server = make(app, host, port)
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this machine can open the study. Put it behind a "
              f"reverse proxy with TLS, and give every reader an access code (docs/reader_study.md)", file=out)
    study = app.study
    print(f"reader study '{study.name}': {len(study.readers)} readers, {len(study.items)} items; answers in "
          f"{app.store.path}", file=out)
    print(f"open http://{shown}:{bound_port}/  (Ctrl-C stops; readers resume where they left off)", file=out,
          flush=True)

    def stop(signum, frame):  # noqa: ARG001
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        print("stopped", file=out, flush=True)
