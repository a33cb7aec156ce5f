"""The metric against a real HTTP server process on 127.0.0.1 (tests/judge_server.py): hand-computed scores, the
disk cache, retries, the timeout, bad answers, the API key and one-line errors."""

from __future__ import annotations

import time

import pytest
import torch

from chexone_llm_judge.client import JudgeConfigError, JudgeResponseError, JudgeUnavailableError
from chexone_llm_judge.metric import LLMJudge

REF_1 = "No pleural effusion. Heart size is normal. Mild pulmonary edema. Low lung volumes."
CAND_1 = "No pleural effusion. Heart size is normal. Small left nodule."      # matched 2, (a) 1, (b) 2 -> 2/5
REF_2 = "Left pleural effusion. No pneumothorax."
CAND_2 = "Right pleural effusion. No pneumothorax. Incidentally, old rib fracture."  # matched 1, (c) 1 -> 1/2
REF_3 = "No acute cardiopulmonary process."
CAND_3 = "No acute cardiopulmonary process."                                  # matched 1 -> 1
REF_4 = "No pneumothorax."
CAND_4 = "Large pneumothorax."                                                # matched 0 -> 0
PREDS = [CAND_1, CAND_2, CAND_3, CAND_4, "", CAND_1, "anything"]
REFS = [REF_1, REF_2, REF_3, REF_4, REF_1, REF_1, ""]
EXPECTED = [2 / 5, 1 / 2, 1.0, 0.0, 0.0, 2 / 5, None]  # empty candidate: 0; empty reference: not scored


def make(judge, **kw) -> LLMJudge:
    return LLMJudge(base_url=judge.url, model=judge.model, backoff=0.01, **kw)


def test_scores_are_the_hand_computed_green_values(judge):
    m = make(judge)
    assert m.eval_inputs == ("final", "answer") and m.primary == "green"
    assert m.score(PREDS, REFS) == [pytest.approx(v) if v is not None else None for v in EXPECTED]
    # 4 distinct scorable pairs: the duplicate, the empty candidate and the empty reference cost no request
    assert judge.chat_requests == 4
    m.update(PREDS, REFS)  # all cached in memory now
    assert judge.chat_requests == 4
    out = m.compute()
    scored = [v for v in EXPECTED if v is not None]
    assert float(out["green"]) == pytest.approx(sum(scored) / len(scored))
    assert int(out["n"]) == 6 and int(out["judged"]) == 5 and int(out["empty_candidates"]) == 1
    # per judged sample: matched 2+1+1+0+2, (a) 1+0+0+1+1, (b) 2+0+0+1+2, (c) 0+1+0+0+0, insignificant 1
    assert float(out["matched_findings"]) == pytest.approx(6 / 5)
    assert float(out["significant_a"]) == pytest.approx(3 / 5)
    assert float(out["significant_b"]) == pytest.approx(5 / 5)
    assert float(out["significant_c"]) == pytest.approx(1 / 5)
    assert float(out["significant_errors"]) == pytest.approx(9 / 5)
    assert float(out["insignificant_errors"]) == pytest.approx(1 / 5)
    assert all(r["model"] == "judge-model" and r["path"] == "/v1/chat/completions" for r in judge.requests())


def test_states_merge_like_ddp_ranks(judge):
    a, b, whole = make(judge), make(judge), make(judge)
    a.update(PREDS[:3], REFS[:3])
    b.update(PREDS[3:], REFS[3:])
    whole.update(PREDS, REFS)
    a.merge_state(b)
    merged, full = a.compute(), whole.compute()
    for key in full:
        assert torch.allclose(merged[key].double(), full[key].double(), equal_nan=True), key
    assert judge.chat_requests == 4  # the three instances share the disk cache


def test_second_run_makes_no_request_and_the_key_includes_the_model(judge, start_judge, tmp_path):
    first = make(judge)
    values = first.score(PREDS, REFS)
    assert judge.chat_requests == 4
    again = make(judge)  # a new process would do the same: nothing in memory, everything on disk
    assert again.score(PREDS, REFS) == values
    assert judge.chat_requests == 4 and again.stats["disk_hits"] == 4 and again.client.stats["requests"] == 0
    other = start_judge(model="other-judge")
    third = LLMJudge(base_url=other.url, model="other-judge", backoff=0.01)
    third.score(PREDS, REFS)
    assert other.chat_requests == 4  # another model: other keys
    nocache = make(judge, cache=False)
    nocache.score(PREDS[:1], REFS[:1])
    assert judge.chat_requests == 5
    explicit = make(judge, cache_dir=str(tmp_path / "elsewhere"))
    explicit.score(PREDS[:1], REFS[:1])
    assert judge.chat_requests == 6 and list((tmp_path / "elsewhere").rglob("*.json"))


def test_5xx_is_retried_with_backoff_then_a_one_line_error(judge):
    judge.control(fail=2)
    m = make(judge, retries=3)
    assert m.score([CAND_3], [REF_3]) == [1.0]
    assert judge.chat_requests == 3 and m.client.stats["retries"] == 2
    assert [r["mode"] for r in judge.requests()] == ["fail", "fail", "ok"]
    judge.control(fail=10)
    m = make(judge, retries=2)
    with pytest.raises(JudgeUnavailableError) as err:
        m.score([CAND_1], [REF_1])
    msg = str(err.value)
    assert "\n" not in msg and "after 3 attempts" in msg and "HTTP 500" in msg and judge.url in msg
    assert judge.chat_requests == 3 + 3


def test_a_hanging_judge_times_out_and_is_retried(judge):
    judge.control(hang=1, hang_seconds=3)
    m = make(judge, timeout=0.5, retries=2)
    t0 = time.monotonic()
    assert m.score([CAND_2], [REF_2]) == [pytest.approx(0.5)]
    assert time.monotonic() - t0 < 2.5  # gave up on the hanging request after 0.5 s, did not wait 3 s
    assert m.client.stats["timeout"] == 1 and judge.chat_requests == 2
    judge.control(hang=5, hang_seconds=3)
    m = make(judge, timeout=0.4, retries=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match=r"after 2 attempts \(last: no answer within 0.4 s\)"):
        m.score([CAND_1], [REF_1])
    assert time.monotonic() - t0 < 2.5


def test_malformed_bodies_are_retried_and_bad_judgements_are_named(judge):
    judge.control(malformed=1)
    m = make(judge)
    assert m.score([CAND_3], [REF_3]) == [1.0]
    assert [r["mode"] for r in judge.requests()] == ["malformed", "ok"]
    judge.control(malformed=10)
    with pytest.raises(JudgeResponseError, match="not an OpenAI chat completion: '<html>upstream proxy error"):
        make(judge, retries=1).score([CAND_1], [REF_1])
    judge.control(malformed=0, garbage=2)
    n = judge.chat_requests
    with pytest.raises(JudgeResponseError) as err:
        make(judge).score([CAND_2], [REF_2])
    assert "did not answer with the JSON object asked for" in str(err.value) and "\n" not in str(err.value)
    assert "mostly fine" in str(err.value)
    assert judge.chat_requests == n + 2  # asked again once (parse_retries=1), then stopped
    # on_bad_answer=skip: not scored, counted, and not cached (asked again next time)
    judge.control(garbage=2)
    skip = make(judge, on_bad_answer="skip")
    skip.update([CAND_2, CAND_3], [REF_2, REF_3])
    out = skip.compute()
    assert int(out["bad_answers"]) == 1 and int(out["n"]) == 1 and float(out["green"]) == 1.0
    assert skip.score([CAND_2], [REF_2]) == [None]  # remembered in this process, no new request
    n = judge.chat_requests
    assert make(judge).score([CAND_2], [REF_2]) == [pytest.approx(0.5)]
    assert judge.chat_requests == n + 1


def test_fenced_judgements_are_accepted(judge):
    judge.control(fenced=True)
    assert make(judge).score([CAND_1], [REF_1]) == [pytest.approx(0.4)]


def test_unreachable_endpoint_fails_fast_with_one_line(closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailableError) as err:
        LLMJudge(base_url=url, model="m")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "\n" not in msg and f"cannot reach the judge endpoint {url}" in msg and "CHEXONE_JUDGE_BASE_URL" in msg
    assert isinstance(err.value, ValueError)  # what chexone's harness reports as one line before generating
    # without the check, scoring retries the connection and then stops with one line
    m = LLMJudge(base_url=url, model="m", check_endpoint=False, retries=2, backoff=0.01)
    with pytest.raises(JudgeUnavailableError, match=r"after 3 attempts \(last: ConnectionRefusedError"):
        m.score([CAND_1], [REF_1])
    assert m.client.stats["requests"] == 3


def test_api_key_from_the_environment_is_sent_and_never_shown(start_judge, monkeypatch, capsys):
    secret = "sk-test-0123456789abcdef"
    server = start_judge(api_key=secret)
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    m = LLMJudge(base_url=server.url, model=server.model, api_key_env="MY_JUDGE_KEY", backoff=0.01)
    assert m.score([CAND_3], [REF_3]) == [1.0]
    assert all(r["auth"] for r in server.requests())
    assert secret not in repr(m.client) and secret not in repr(m)
    monkeypatch.setenv("MY_JUDGE_KEY", "wrong-key-value")
    with pytest.raises(JudgeConfigError, match="refused the API key") as err:
        LLMJudge(base_url=server.url + "/", model=server.model, api_key_env="MY_JUDGE_KEY")
    assert "wrong-key-value" not in str(err.value)
    with pytest.raises(JudgeConfigError, match="HTTP 401"):  # refused at request time, not retried
        LLMJudge(base_url=server.url, model=server.model, api_key_env="MY_JUDGE_KEY",
                 check_endpoint=False).score([CAND_1], [REF_1])
    cache_files = list((m.disk.dir).rglob("*.json"))
    assert cache_files and all(secret not in p.read_text() for p in cache_files)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_settings_from_the_environment_and_config_errors(judge, monkeypatch):
    monkeypatch.setenv("CHEXONE_JUDGE_BASE_URL", judge.root)  # no /v1: added
    monkeypatch.setenv("CHEXONE_JUDGE_MODEL", judge.model)
    m = LLMJudge(backoff=0.01)
    assert m.client.url == f"{judge.url}/chat/completions"
    assert m.score([CAND_3], [REF_3]) == [1.0]
    monkeypatch.delenv("CHEXONE_JUDGE_BASE_URL")
    with pytest.raises(JudgeConfigError, match="no judge endpoint: set base_url="):
        LLMJudge()
    with pytest.raises(JudgeConfigError, match="not an http"):
        LLMJudge(base_url="ftp://example.org/v1", model="m")
    monkeypatch.delenv("CHEXONE_JUDGE_MODEL")
    with pytest.raises(JudgeConfigError, match="no judge model"):
        LLMJudge(base_url=judge.url)
    with pytest.raises(JudgeConfigError, match="on_bad_answer"):
        LLMJudge(base_url=judge.url, model="m", on_bad_answer="ignore")
    with pytest.raises(JudgeConfigError, match="timeout"):
        LLMJudge(base_url=judge.url, model="m", timeout=0)
    with pytest.raises(ValueError, match="Unexpected keyword"):
        LLMJudge(base_url=judge.url, model="m", temprature=0.2)
    with pytest.warns(UserWarning, match="does not list model 'unknown-model'"):
        LLMJudge(base_url=judge.url, model="unknown-model")
    r = LLMJudge(base_url=judge.url, model=judge.model, reference="report", prediction="response")
    assert r.eval_inputs == ("response", "report")


def test_concurrent_requests_are_bounded_and_all_answered(judge):
    refs = [f"Finding number {i}. No effusion." for i in range(12)]
    preds = [f"Finding number {i}. Left effusion." for i in range(12)]
    judge.control(delay=0.1)
    m = make(judge, concurrency=3)
    assert m.score(preds, refs) == [pytest.approx(1 / 3)] * 12  # matched 1, (a) 1, (b) 1
    assert judge.chat_requests == 12
    assert 2 <= judge.max_inflight <= 3
