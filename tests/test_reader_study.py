"""Reader-study app: the study file's validation, blinded randomised plans, access codes, the database URL, SQLite
persistence (across a real server restart), and the web app's behaviour: unknown readers, CSRF, path traversal,
duplicate submissions, escaping and blinding."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

from chexone.reader_study import auth, edits
from chexone.reader_study.__main__ import main
from chexone.reader_study.app import ReaderStudyApp
from chexone.reader_study.drafts import DraftError, read_drafts
from chexone.reader_study.images import ImageError, resolve
from chexone.reader_study.plan import item_order, model_first_flags, reader_plan
from chexone.reader_study.server import make
from chexone.reader_study.store import AlreadySigned, DatabaseError, Store, db_path
from chexone.reader_study.study import StudyError, load_study
from reader_study_kit import MODEL_NAME, Client, ServerProcess, answer_fields, current_item, make_study, raw_get

# ------------------------------------------------------------------------------------------------- study file


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_valid_study_loads_with_documented_defaults(tmp_path):
    study = load_study(make_study(tmp_path))
    assert study.name == "test-study" and study.seed == 7 and study.order == "random"
    assert [s.key for s in study.likert] == ["correctness", "completeness", "clinical_usefulness"]
    assert all((s.min, s.max) == (1, 5) for s in study.likert)
    assert [it.id for it in study.items] == ["d1", "d2", "p1", "p2", "q1", "q2"]
    assert study.item("p1").reference_source == "radiologist"
    assert study.missing_drafts() == []
    assert study.model_text(study.item("q1")) == ("Step 1 for q1.\nStep 2 <b>bold</b>.", "Answer 1: yes.")
    assert study.reader(" R1 ").id == "r1"  # ids ignore case and surrounding spaces
    assert study.reader("r9") is None


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(item=d.pop("items")), r"unknown key 'item'; did you mean 'items'\?"),
    (lambda d: d["items"][2].update(referense_report="x"),
     r"items\[2\] \(id 'p1'\): unknown key 'referense_report'; did you mean 'reference_report'\?"),
    (lambda d: d["items"][0].update(type="draft_edits"),
     r"items\[0\] \(id 'd1'\)\.type: 'draft_edits' is not one of .*did you mean 'draft_edit'\?"),
    (lambda d: d["items"][1].update(id="d1"), r"items\[1\] \(id 'd1'\): duplicate item id \(same as items\[0\]\)"),
    (lambda d: d["items"][2].pop("reference_report"), r"items\[2\] \(id 'p1'\): missing required key "
                                                       r"'reference_report'"),
    (lambda d: d["items"][4].pop("question"), r"items\[4\] \(id 'q1'\): missing required key 'question'"),
    (lambda d: d["items"][0].update(images=["nope.png"]), r"items\[0\] \(id 'd1'\)\.images\[0\]: image file not "
                                                          r"found"),
    (lambda d: d["items"][0].update(images=["../study.yaml"]), r"must be a path inside images_root"),
    (lambda d: d["items"][0].update(images=["img1.gif"]), r"not a PNG, JPEG or DICOM file"),
    (lambda d: d.update(readers=["r1", "R1"]), r"readers\[1\]: duplicate reader id 'R1'"),
    (lambda d: d.update(readers=[{"id": "r1", "pasword": "x"}]), r"readers\[0\]: unknown key 'pasword'; did you "
                                                                  r"mean 'password'\?"),
    (lambda d: d.update(readers=[{"id": "r1", "password": "a", "password_hash": "b"}]), r"not both"),
    (lambda d: d.update(readers=[{"id": "r1", "password_hash": "md5$1$2"}]), r"readers\[0\]\.password_hash: expected "
                                                                              r"'pbkdf2_sha256"),
    (lambda d: d.update(readers=[{"id": "bad id!"}]), r"readers\[0\]: reader id 'bad id!' must be"),
    (lambda d: d.update(likert=[{"key": "x", "label": "X", "min": 5, "max": 5}]), r"likert\[0\]: needs min < max"),
    (lambda d: d.update(likert=[{"key": "Bad Key", "label": "X"}]), r"likert\[0\]\.key: 'Bad Key' must be"),
    (lambda d: d.update(order="shuffled"), r"order: 'shuffled' is not one of random, by_type, fixed"),
    (lambda d: d.update(seed="abc"), r"seed: expected an integer"),
    (lambda d: d.pop("readers"), r"missing required key 'readers'"),
    (lambda d: d.update(instructions={"pairwse": "x"}), r"instructions: unknown key 'pairwse'; did you mean "
                                                        r"'pairwise'\?"),
])
def test_study_errors_name_the_file_and_key(tmp_path, change, expected):
    path = _edit(make_study(tmp_path), change)
    with pytest.raises(StudyError, match=expected) as exc:
        load_study(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study: x\nitems: [\n  - a: b\n  c\n")
    with pytest.raises(StudyError, match=r"s\.yaml: not valid YAML \(line \d+\)"):
        load_study(path)


def test_a_symlink_leading_out_of_the_images_root_is_refused(tmp_path):
    path = make_study(tmp_path / "s")
    (tmp_path / "outside.png").write_bytes((tmp_path / "s" / "images" / "img1.png").read_bytes())
    (tmp_path / "s" / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    _edit(path, lambda d: d["items"][0].update(images=["link.png"]))
    with pytest.raises(StudyError, match=r"'link.png' leads outside images_root"):
        load_study(path)


def test_drafts_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "drafts.jsonl"
    p.write_text('{"id": "a", "answer": "x"}\n{not json}\n')
    with pytest.raises(DraftError, match=r"drafts\.jsonl:2: not a JSON object"):
        read_drafts(p)
    p.write_text('{"id": "a", "answr": "x"}\n')
    with pytest.raises(DraftError, match=r"drafts\.jsonl:1: unknown key 'answr'; did you mean 'answer'\?"):
        read_drafts(p)
    p.write_text('{"id": "a", "answer": "  "}\n')
    with pytest.raises(DraftError, match=r":1: item 'a': missing or empty 'answer'"):
        read_drafts(p)


def test_serve_refuses_a_study_with_missing_drafts(tmp_path, capsys):
    path = make_study(tmp_path, drafts=False)
    assert main(["serve", "--study", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "6 items have no model text" in err and "'d1'" in err
    assert "chexone.reader_study drafts" in err and len(err.splitlines()) == 1


def test_config_errors_exit_2_with_one_line(tmp_path, capsys):
    path = _edit(make_study(tmp_path), lambda d: d.update(sede=3))
    for cmd in (["serve", "--study", str(path)], ["export", "--study", str(path), "--out", str(tmp_path / "o")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {path}: unknown key 'sede'; did you mean 'seed'? (allowed: " + \
            "study, description, seed, order, images_root, drafts, max_pixels, draft_question, instructions, " \
            "readers, likert, items)"


# ------------------------------------------------------------------------------------------ order and blinding


def _big_study(tmp_path, order="random", seed=7):
    return load_study(make_study(tmp_path, n_draft=6, n_pairwise=7, n_rating=6, extra={"order": order,
                                                                                       "seed": seed}))


def test_plans_are_reproducible_across_processes(tmp_path):
    study = _big_study(tmp_path)
    mine = [(a.item_id, a.model_first) for a in reader_plan(study, "r1")]
    assert mine == [(a.item_id, a.model_first) for a in reader_plan(study, "r1")]
    code = ("import json, sys; from chexone.reader_study.study import load_study; "
            "from chexone.reader_study.plan import reader_plan; "
            "print(json.dumps([(a.item_id, a.model_first) for a in reader_plan(load_study(sys.argv[1]), 'r1')]))")
    out = subprocess.run([sys.executable, "-c", code, str(study.path)], capture_output=True, text=True, timeout=60,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True).stdout
    assert [tuple(x) for x in json.loads(out)] == mine
    assert sorted(i for i, _ in mine) == sorted(it.id for it in study.items)


def test_plans_differ_between_readers_and_seeds(tmp_path):
    study = _big_study(tmp_path / "a")
    other_seed = _big_study(tmp_path / "b", seed=8)
    assert item_order(study, "r1") != item_order(study, "r2")
    assert item_order(study, "r1") != item_order(other_seed, "r1")


def test_order_modes(tmp_path):
    fixed = _big_study(tmp_path / "f", order="fixed")
    assert item_order(fixed, "r1") == [it.id for it in fixed.items]
    by_type = _big_study(tmp_path / "t", order="by_type")
    order = item_order(by_type, "r1")
    types = [by_type.item(i).type for i in order]
    assert types == ["draft_edit"] * 6 + ["pairwise"] * 7 + ["reasoning_rating"] * 6
    assert order != [it.id for it in by_type.items]  # shuffled within the blocks


def test_pairwise_sides_are_balanced_within_and_across_readers(tmp_path):
    study = _big_study(tmp_path)  # 7 pairwise items
    per_item = Counter()
    readers = [f"reader{i}" for i in range(400)]
    for r in readers:
        flags = model_first_flags(study, r)
        assert len(flags) == 7 and sum(flags.values()) in (3, 4)  # balanced within the reader
        per_item.update(k for k, v in flags.items() if v)
    # across readers each item's model report is on the left about half the time (binomial sd = 10 of 400)
    assert all(160 <= per_item[k] <= 240 for k in flags), per_item


def test_positions_are_uniform_across_readers(tmp_path):
    study = _big_study(tmp_path)  # 19 items, random order
    first = Counter(item_order(study, f"reader{i}")[0] for i in range(1900))
    # each item is first ~100 of 1900 times; a chi-square with 18 df stays far below 60 for a fair shuffle
    chi2 = sum((first[it.id] - 100) ** 2 / 100 for it in study.items)
    assert chi2 < 60, first


# ----------------------------------------------------------------------------------------------- access codes


def test_password_hash_is_pbkdf2_sha256_and_checks_in_constant_time(tmp_path):
    salt = b"0123456789abcdef"
    h = auth.hash_password("s3cret", iterations=1000, salt=salt)
    expected = base64.urlsafe_b64encode(hashlib.pbkdf2_hmac("sha256", b"s3cret", salt, 1000)).decode().rstrip("=")
    assert h.split("$") == ["pbkdf2_sha256", "1000", base64.urlsafe_b64encode(salt).decode().rstrip("="), expected]
    assert auth.check_hash_format(h) is None
    assert auth.verify_password("s3cret", h) and not auth.verify_password("s3cret ", h)
    study = load_study(make_study(tmp_path, readers=[{"id": "a", "password": "pw"}, {"id": "b", "password_hash": h},
                                                     "c"]))
    a, b, c = study.readers
    assert "pw" not in repr(a) and h not in repr(b)  # never printed by accident
    assert auth.check_reader(a, "pw") and not auth.check_reader(a, "PW") and not auth.check_reader(a, "")
    assert auth.check_reader(b, "s3cret") and not auth.check_reader(b, "pw")
    assert auth.check_reader(c, "")


def test_hash_password_command_reads_stdin(tmp_path):
    out = subprocess.run([sys.executable, "-m", "chexone.reader_study", "hash-password", "--iterations", "1000"],
                         input="letmein\n", capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert auth.check_hash_format(out) is None and auth.verify_password("letmein", out)
    assert "letmein" not in out


# ----------------------------------------------------------------------------------------------------- edits


@pytest.mark.parametrize("a, b, d", [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3),
                                     ("same", "same", 0), ("intention", "execution", 5)])
def test_levenshtein_textbook_values(a, b, d):
    assert edits.levenshtein(a, b) == d == edits.levenshtein(b, a)


def test_edit_stats_on_words_and_characters():
    s = edits.edit_stats("No acute findings.", "No acute cardiopulmonary findings.")
    assert s["edited"] and s["char_edit_distance"] == len("cardiopulmonary ")
    assert s["normalised_char_edit_distance"] == pytest.approx(16 / 34)
    assert s["word_edit_distance"] == 1 and s["normalised_word_edit_distance"] == pytest.approx(1 / 4)
    same = edits.edit_stats("x y", "x y")
    assert not same["edited"] and same["char_edit_distance"] == 0 and same["normalised_word_edit_distance"] == 0


# ---------------------------------------------------------------------------------------------- database URL


def test_db_url_handling(tmp_path):
    study = tmp_path / "study.yaml"
    assert db_path(None, study) == tmp_path / "reader_study.sqlite3"
    assert db_path("answers.db", study) == Path("answers.db")
    assert db_path("sqlite:///rel/answers.db", study) == Path("rel/answers.db")
    assert db_path("sqlite:////abs/answers.db", study) == Path("/abs/answers.db")
    assert db_path("sqlite:///with%20space.db", study) == Path("with space.db")
    with pytest.raises(DatabaseError, match=r"'postgresql://' databases are not supported: only SQLite") as exc:
        db_path("postgresql://alice:hunter2@db.example/study", study)
    assert "hunter2" not in str(exc.value) and "alice" not in str(exc.value)
    for bad, why in [("sqlite://", "sqlite:///relative/path"), ("sqlite:///:memory:", "in-memory"),
                     ("sqlite:///x.db?mode=ro", "options"), ("mysql://h/db", "'mysql://' databases")]:
        with pytest.raises(DatabaseError, match=why):
            db_path(bad, study)


def test_serve_rejects_other_database_schemes(tmp_path, capsys):
    path = make_study(tmp_path)
    assert main(["serve", "--study", str(path), "--db", "postgresql://u:topsecret@h/db"]) == 2
    err = capsys.readouterr().err
    assert "only SQLite" in err and "topsecret" not in err


def test_a_database_belongs_to_one_study(tmp_path):
    Store(tmp_path / "a.db", "study-a").close()
    with pytest.raises(DatabaseError, match=r"belongs to study 'study-a', not 'study-b'"):
        Store(tmp_path / "a.db", "study-b")
    with pytest.raises(DatabaseError, match="no such database"):
        Store(tmp_path / "missing.db", "study-a", create=False, readonly=True)
    (tmp_path / "junk.db").write_bytes(b"not a database at all, just some bytes" * 40)
    with pytest.raises(DatabaseError, match="not a usable SQLite database"):
        Store(tmp_path / "junk.db", "study-a")


def test_signed_answers_are_final_and_failed_writes_leave_nothing(tmp_path):
    store = Store(tmp_path / "s.db", "x")
    store.mark_shown("r1", "d1", now=100.0)
    a = store.save_answer("r1", "d1", "draft_edit", {"final": "first"}, now=130.5)
    assert a.seconds_to_sign == pytest.approx(30.5) and a.first_shown_at == 100.0
    with pytest.raises(AlreadySigned):
        store.save_answer("r1", "d1", "draft_edit", {"final": "second"}, now=140.0)
    assert store.answer("r1", "d1").payload == {"final": "first"}
    refused = store.events("resubmit_refused")
    assert len(refused) == 1 and refused[0]["detail"] == {"payload": {"final": "second"}}
    with pytest.raises(TypeError):  # a payload that cannot be stored: the transaction rolls back as a whole
        store.save_answer("r1", "d2", "draft_edit", {"final": object()}, now=150.0)
    assert [x.item_id for x in store.answers()] == ["d1"]
    assert len(store.events("sign")) == 1
    store.close()
    con = sqlite3.connect(tmp_path / "s.db")  # an independent reader of the file sees the same
    assert con.execute("SELECT item_id, payload FROM answers").fetchall() == [("d1", '{"final": "first"}')]
    con.close()


# ---------------------------------------------------------------------------------------------- the web app


@pytest.fixture()
def served(tmp_path):
    """The app on a free port in this process (threads), with its study, store and base URL."""
    path = make_study(tmp_path, readers=["r1", "r2", {"id": "r3", "password": "open sesame"}])
    study = load_study(path)
    store = Store(tmp_path / "answers.db", study.name)
    app = ReaderStudyApp(study, store)
    server = make(app, "127.0.0.1", 0, log=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "port": server.server_address[1],
           "study": study, "store": store, "root": tmp_path}
    server.shutdown()
    server.server_close()
    store.close()


def _state(store: Store) -> tuple:
    return (store.answers(), store.all_plans(), store._read("SELECT COUNT(*) FROM sessions")[0][0],
            store.events())


def test_unknown_reader_gets_an_error_page_and_nothing_is_saved(served):
    client = Client(served["url"])
    before = _state(served["store"])
    status, page = client.login("mallory")
    assert status == 403
    assert "Unknown reader ID" in page and "nothing was saved" in page
    assert _state(served["store"]) == before == ([], {}, 0, [])
    assert client.request("/task", follow=False)[0] == 401  # not logged in
    status, page = client.login("")
    assert status == 400 and "Enter your reader ID" in page


def test_access_codes(served):
    client = Client(served["url"])
    status, page = client.login("r3", "wrong")
    assert status == 403 and "Wrong access code" in page
    assert served["store"].events("login_failed")[0]["reader_id"] == "r3"
    status, page = client.login("R3", "open sesame")  # ids ignore case
    assert status == 200 and "Item 1 of 6" in page and "open sesame" not in page


def test_login_needs_the_form_token(served):
    client = Client(served["url"])
    status, page, _ = client.request("/login", {"reader_id": "r1"})
    assert status == 403 and "CSRF" in page
    assert served["store"].all_plans() == {}


def test_csrf_token_is_required_for_every_form(served):
    client = Client(served["url"])
    client.login("r1")
    _, task, _ = client.request("/task")
    item, fields = current_item(task), answer_fields(task)
    for csrf in ("", "forged-token"):
        status, page, _ = client.submit(item, fields, csrf=csrf)
        assert status == 403 and "CSRF" in page and "Nothing was saved" in page
    assert served["store"].answers() == []
    # another reader's valid token is no good for this session either
    other = Client(served["url"])
    other.login("r2")
    status, _, _ = client.submit(item, fields, csrf=other.csrf)
    assert status == 403 and served["store"].answers() == []
    status, _, headers = client.submit(item, fields)
    assert status == 303 and headers["Location"] == "/task"
    assert [a.item_id for a in served["store"].answers()] == [item]
    assert client.request("/logout", {"csrf": "nope"})[0] == 403


def test_duplicate_submit_is_refused_and_keeps_the_first_answer(served):
    client = Client(served["url"])
    client.login("r1")
    _, page, _ = client.request("/task")
    item = current_item(page)
    fields = answer_fields(page, 0)
    assert client.submit(item, fields)[0] == 303
    status, text, _ = client.submit(item, answer_fields(page, 1))
    assert status == 409 and "already signed" in text and "nothing was changed" in text
    answers = served["store"].answers()
    assert len(answers) == 1
    kept = answers[0].payload
    assert kept.get("final", kept.get("reason", kept.get("comment"))) == \
        fields.get("report", fields.get("reason", fields.get("comment")))
    assert len(served["store"].events("resubmit_refused")) == 1


def test_a_bad_request_keeps_the_text_and_saves_nothing(served):
    client = Client(served["url"])
    client.login("r2")
    # sign until a pairwise item comes up
    for _ in range(6):
        _, page, _ = client.request("/task")
        if 'name="choice"' in page:
            break
        client.submit(current_item(page), answer_fields(page))
    item = current_item(page)
    signed_before = served["store"].answers("r2")
    status, text, _ = client.submit(item, {"reason": "typed <reason> & kept"})
    assert status == 400 and "Choose Report 1, Report 2 or Equal" in text
    assert "typed &lt;reason&gt; &amp; kept" in text  # the reader's text is kept, escaped
    assert served["store"].answers("r2") == signed_before
    assert client.submit(item, {"choice": "equal", "reason": "fine"})[0] == 303
    assert served["store"].answer("r2", item).payload["preferred"] == "equal"


def test_pages_escape_text_and_never_show_the_model(served):
    client = Client(served["url"])
    client.login("r1")
    plan = served["store"].plan("r1")
    seen = set()
    for n in range(6):
        _, page, _ = client.request("/task")
        item = served["study"].item(current_item(page))
        seen.add(item.type)
        assert MODEL_NAME not in page and "model" not in page.lower()
        assert f"Item {n + 1} of 6" in page
        if item.type == "reasoning_rating":
            assert "Step 2 &lt;b&gt;bold&lt;/b&gt;." in page and "<b>bold</b>" not in page
        if item.type == "pairwise":
            model_first = next(a.model_first for a in plan if a.item_id == item.id)
            texts = re.findall(r'<div class="text" id="report-\d">([^<]*)</div>', page)
            model_text = served["study"].model_text(item)[1]
            assert texts == ([model_text, item.reference_report] if model_first else
                             [item.reference_report, model_text])
        client.submit(item.id, answer_fields(page, n))
    assert seen == {"draft_edit", "pairwise", "reasoning_rating"}
    status, page, _ = client.request("/task")
    assert status == 200 and "You have signed all 6 items" in page


def test_security_headers_and_cookies(served):
    client = Client(served["url"])
    _, _, headers = client.request("/login")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]


def test_images_are_served_from_the_root_only(served):
    root = served["root"]
    (root / "secret.txt").write_text("top secret")
    (root / "images" / "unlisted.png").write_bytes((root / "images" / "img1.png").read_bytes())
    port = served["port"]
    assert raw_get(port, "/images/img1.png") == 401  # not logged in
    client = Client(served["url"])
    client.login("r1")
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    status, body, headers = client.request("/images/img1.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with client.follow.open(served["url"] + "/images/img1.png") as r:
        assert r.read() == (root / "images" / "img1.png").read_bytes()
    for path in ["/images/../secret.txt", "/images/%2e%2e/secret.txt", "/images/..%2fsecret.txt",
                 "/images/%2e%2e%2fsecret.txt", "/images//etc/passwd", "/images/%2fetc%2fpasswd",
                 "/images/..%5csecret.txt", "/images/img1.png%00.txt", "/images/unlisted.png",
                 "/images/./img1.png", "/images/"]:
        assert raw_get(port, path, cookie) in (400, 403, 404), path
    assert raw_get(port, "/static/../study.yaml") == 404
    # a symlink swapped in after start-up is still refused
    study = served["study"]
    (root / "images" / "img2.png").unlink()
    (root / "images" / "img2.png").symlink_to(root / "secret.txt")
    with pytest.raises(ImageError) as exc:
        resolve(study, "img2.png")
    assert exc.value.status == 403
    assert raw_get(port, "/images/img2.png", cookie) == 403


def test_dicom_is_served_as_png_without_its_tags(tmp_path):
    import numpy as np

    from webdata.synthetic import write_dicom

    path = make_study(tmp_path, n_draft=1, n_pairwise=0, n_rating=0)
    write_dicom(tmp_path / "images" / "x.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096,
                patient_name="DOE^JANE")
    _edit(path, lambda d: d["items"][0].update(images=["x.dcm"]))
    from chexone.reader_study.images import ImageServer

    data, ctype = ImageServer(load_study(path)).get("x.dcm")
    assert ctype == "image/png" and data.startswith(b"\x89PNG") and b"DOE" not in data


def test_a_restart_keeps_answers_and_the_reader_resumes(tmp_path):
    path = make_study(tmp_path)
    db = tmp_path / "answers.db"
    with ServerProcess(path, f"sqlite:///{db}") as server:
        client = Client(server.url)
        assert client.login("r1")[0] == 200
        _, page, _ = client.request("/task")
        first = current_item(page)
        fields = answer_fields(page, 0)
        assert client.submit(first, fields)[0] == 303
        _, page, _ = client.request("/task")
        second = current_item(page)
        assert "Item 2 of 6" in page and second != first
    _, log = server.stop()
    assert "r1" not in log and first not in log and "Edited report" not in log  # no reader, item or text in the log
    with ServerProcess(path, db) as server:
        client = Client(server.url)
        status, page = client.login("r1")
        assert status == 200 and "Item 2 of 6" in page and current_item(page) == second
        assert client.submit(first, answer_fields(page, 5))[0] == 409
    store = Store(db, "test-study", create=False, readonly=True)
    answers = store.answers()
    assert [(a.reader_id, a.item_id) for a in answers] == [("r1", first)]
    text_field = {"report": "final", "reason": "reason", "comment": "comment"}
    key = next(k for k in text_field if k in fields)
    assert answers[0].payload[text_field[key]] == fields[key]
    assert answers[0].seconds_to_sign is not None and answers[0].seconds_to_sign >= 0
    store.close()


def test_export_works_without_the_reader_study_extra(tmp_path, monkeypatch, capsys):
    """Agreement statistics need scikit-learn / pingouin; without them the rest of the export is still written."""
    path = make_study(tmp_path, n_draft=0, n_pairwise=2, n_rating=2)
    study = load_study(path)
    store = Store(tmp_path / "a.db", study.name)
    app = ReaderStudyApp(study, store)
    for r in ("r1", "r2"):
        plan = {a.item_id: a for a in store.ensure_plan(r, reader_plan(study, r))}
        for it in study.items:
            form = {"choice": "1", "reason": "x"} if it.type == "pairwise" else \
                {f"rate_{s.key}": "3" for s in study.likert}
            store.save_answer(r, it.id, it.type, app._payload(it, plan[it.id], form)[0])
    store.close()
    for module in ("sklearn", "sklearn.metrics", "pingouin"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(["export", "--study", str(path), "--db", str(tmp_path / "a.db"), "--out", str(tmp_path / "o"),
                 "--no-plots"]) == 0
    assert "warning: reader-study agreement statistics need the optional package" in capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["pairwise"]["agreement"][0]["kappa"] is None
    assert "reader-study extra" in summary["pairwise"]["agreement"][0]["note"]
    assert summary["pairwise"]["overall"]["equal"]["k"] == 0 and (tmp_path / "o" / "pairwise.csv").is_file()
