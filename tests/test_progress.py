"""Progress output suits where it goes: a tqdm bar on a terminal, one plain line per update (rate-limited) elsewhere."""

import io

from chexone.progress import LineProgress, describe, format_duration, progress


def test_line_progress_prints_one_line_per_update_with_counts():
    out = io.StringIO()
    bar = LineProgress(total=4, desc="demo train", unit="samples", file=out, interval=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(" | ")[0] for line in lines] == [
        "demo train: 1/4 samples (25%)", "demo train: 2/4 samples (50%)", "demo train: 3/4 samples (75%)",
        "demo train: 4/4 samples (100%)"]


def test_line_progress_is_rate_limited_but_always_shows_the_end():
    out = io.StringIO()
    bar = LineProgress(total=1000, desc="x", file=out, interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("x: 1/1000 it") and lines[1].startswith("x: 1000/1000 it (100%)")


def test_postfix_resume_offset_and_iteration():
    out = io.StringIO()
    bar = LineProgress(total=10, desc="train", unit="steps", initial=6, file=out, interval=0)
    bar.set_postfix({"train/loss": 1.23456789})
    bar.update(2)
    assert out.getvalue().startswith("train: 2/4 steps (50%)") and "train/loss 1.235" in out.getvalue()
    assert "(resumed at 6)" in out.getvalue()
    out = io.StringIO()
    assert list(LineProgress([1, 2, 3], desc="it", file=out, interval=0)) == [1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("it: 3/3 it (100%)")


def test_progress_picks_lines_off_a_terminal_and_respects_the_switch(monkeypatch):
    monkeypatch.delenv("CHEXONE_PROGRESS", raising=False)
    assert isinstance(progress(total=3, file=io.StringIO()), LineProgress)
    monkeypatch.setenv("CHEXONE_PROGRESS", "bar")
    from tqdm import tqdm

    assert isinstance(progress(total=3, file=io.StringIO()), tqdm)
    monkeypatch.setenv("CHEXONE_PROGRESS", "off")
    out = io.StringIO()
    bar = progress(total=3, file=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""


def test_describe_and_durations():
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"
    text = describe(30, 120, "steps", 60.0, "loss 2")
    assert text == "30/120 steps (25%) | 1:00 elapsed, 0.5 steps/s, ~3:00 left | loss 2"
