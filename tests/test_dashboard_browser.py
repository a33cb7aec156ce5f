"""The run report in a real headless Chromium (Playwright, Debian's chromium as in the reader-study browser test):
every section renders, every embedded image decodes, nothing is fetched from anywhere, and a screenshot is saved
(to $CHEXONE_SCREENSHOTS or the test's temporary directory) so the page can be read as an image."""

from __future__ import annotations

from browser_kit import CHROMIUM, needs_chromium, screenshot_dir
from test_dashboard import make_run_dir


@needs_chromium
def test_the_report_renders_in_a_real_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from chexone.dashboard.report import build_report

    shots = screenshot_dir(tmp_path)
    report = build_report(make_run_dir(tmp_path / "run"))
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            expect(page.locator("h1")).to_contain_text("chexone run report: run")
            for section in ("rewards", "policy", "speed", "validation", "completions", "evaluation"):
                expect(page.locator(f"section#{section} h2")).to_be_visible()
            nav = page.locator("nav a")
            assert nav.count() == page.locator("section").count() == 6
            # the per-family reward curve and the trend table, both rising
            expect(page.locator('figure[data-panel="Total reward per task family"] img')).to_be_visible()
            assert page.locator("#reward-trend tr.trend-up").count() == 3
            # every image (panels, thumbnails, the evaluation plot) decoded to real pixels
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            assert len(images) == 4 + 4 + 1  # 4 panels with curves, 4 thumbnails, the evaluation's plot
            broken = [alt for alt, complete, width in images if not complete or width == 0]
            assert not broken, broken
            widths = page.evaluate("Array.from(document.querySelectorAll('figure.panel img')).map(i => i.naturalWidth)")
            assert widths and all(w == 480 for w in widths)
            thumbs = page.locator("img.thumb")
            assert thumbs.count() == 4  # 2 logged steps x (one shared close_vqa thumbnail + one grounding)
            # the escaped question shows as text
            expect(page.locator("section#completions")).to_contain_text("Is the heart <enlarged>?")
            expect(page.locator("section#evaluation")).to_contain_text("0.500 [0.400, 0.600]")
            page.screenshot(path=str(shots / "report-top.png"))
            page.locator("section#completions").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "report-completions.png"))
            page.screenshot(path=str(shots / "report-full.png"), full_page=True)
        finally:
            browser.close()
    # only the page itself and its embedded data: no network, no other file
    assert requested and all(u == report.as_uri() or u.startswith("data:") for u in requested), requested
    for name in ("report-top.png", "report-completions.png", "report-full.png"):
        assert (shots / name).stat().st_size > 10_000
