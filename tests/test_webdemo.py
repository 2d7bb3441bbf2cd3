"""tempura-demo, the Gradio app: the timeline figure and table from parsed
answers; the request handler on a demo video, an upload and bad input; and
the page in headless Chromium (Debian's chromium + chromium-driver) on a real
server on 127.0.0.1: one dense-caption request on a demo video draws the
timeline with its events, the table and the stamped frames, and the page
loads nothing from outside. The screenshot is kept under the test's tmp dir
(its path is printed)."""

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tempura_jax.webdemo.timeline import PREDICTED, TRUTH, table_rows, timeline_figure

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1200,1800")  # fmt: skip
TRUTH_EVENTS = [[0.0, 4.0, "a red square appears"], [4.0, 9.0, "it moves left"]]


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def _colour_share(png: bytes, hex_colour: str) -> float:
    """Share of the picture's pixels that are `hex_colour` blended on white
    (the bars' alpha), i.e. drawn bars of that row."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    colour, white = _rgb(hex_colour), np.full(3, 255.0)
    hits = np.zeros(img.shape[:2], bool)
    for alpha in (0.55, 0.9):
        want = alpha * colour + (1 - alpha) * white
        hits |= np.abs(img - want).max(-1) < 12
    return float(hits.mean())


def _table(driver, elem_id: str) -> list[list[str]]:
    """A gradio Dataframe's shown cells (its rows are virtualised divs), by row."""
    cells = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} [data-testid^='cell-']`)]"
        ".map(c => [+c.dataset.row, +c.dataset.col, c.innerText.trim()])",
        elem_id,
    )
    rows: dict[int, dict[int, str]] = {}
    for r, c, text in cells:
        rows.setdefault(r, {})[c] = text
    return [[row[c] for c in sorted(row)] for _, row in sorted(rows.items())]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_timeline_draws_predicted_and_truth_rows_and_tables_them():
    parsed = {"events": [[1.0, 3.0, "a red square appears"], [3.0, 8.5, "it moves"]]}
    fig = timeline_figure(10.0, parsed, TRUTH_EVENTS, mask=(5.0, 6.0))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["predicted", "ground truth"]
    bars = {  # (row, start, end) of each bar; the mask span is full height
        (round(p.get_y() + p.get_height() / 2), p.get_x(), p.get_x() + p.get_width())
        for p in ax.patches
        if abs(p.get_height() - 0.6) < 1e-6
    }
    assert bars == {(0, 1.0, 3.0), (0, 3.0, 8.5), (1, 0.0, 4.0), (1, 4.0, 9.0)}
    png = _png(fig)
    assert _colour_share(png, PREDICTED) > 0.01 and _colour_share(png, TRUTH) > 0.01
    # no prediction: the predicted row stays empty, the truth is still drawn
    empty = _png(timeline_figure(10.0, {"events": []}, TRUTH_EVENTS))
    assert _colour_share(empty, PREDICTED) < 1e-3 < _colour_share(empty, TRUTH)
    assert table_rows(parsed, TRUTH_EVENTS) == [
        ["predicted", 1.0, 3.0, "a red square appears"],
        ["predicted", 3.0, 8.5, "it moves"],
        ["ground truth", 0.0, 4.0, "a red square appears"],
        ["ground truth", 4.0, 9.0, "it moves left"],
    ]
    # windows (grounding, masked) and highlight clips (2 s from their time)
    assert table_rows({"windows": [[2.0, 5.0]]}, []) == [["predicted", 2.0, 5.0, ""]]
    assert table_rows({"highlights": [[4.0, 3.5]]}, []) == [["predicted", 4.0, 6.0, "3.5"]]


@pytest.fixture(scope="module")
def demo_session(demo_data, tmp_path_factory):
    """The demo session on the tiny random model, in this process (8 new tokens)."""
    from tempura_jax.webdemo.session import DemoSession

    work = tmp_path_factory.mktemp("webdemo")
    (work / "data").symlink_to(demo_data["media_root"])
    return DemoSession.load(None, work, max_new_tokens=8)


def test_handler_runs_demo_videos_and_uploads_and_names_bad_input(demo_session, tmp_path):
    import gradio as gr

    from tempura_jax.webdemo.ui import run_request

    name = sorted(demo_session.videos)[0]
    answer, fig, table, gallery = run_request(demo_session, name, None, "dense", "", None, None)
    truth = demo_session.videos[name].events
    assert truth and [r[1:] for r in table if r[0] == "ground truth"] == [
        [round(a, 2), round(b, 2), c] for a, b, c in truth
    ]
    assert len(gallery) >= 10 and gallery[0][0].ndim == 3 and gallery[0][1].endswith(" s")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["predicted", "ground truth"]
    # an upload (a file path from gradio) has no ground truth; the mask is drawn
    upload = demo_session.videos[name].path
    _, fig, table, _ = run_request(demo_session, name, upload, "masked", "", 2.0, 4.0)
    assert all(r[0] == "predicted" for r in table)
    assert fig.axes[0].get_legend() is not None  # the masked span
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video")
    for args, reason in [
        ((name, str(garbage), "dense", "", None, None), "broken.mp4"),
        ((name, None, "grounding", "", None, None), "needs a query"),
        ((name, None, "masked", "", None, None), "needs a masked window"),
        ((name, None, "masked", "", 5.0, 2.0), "start < end"),
        (("nope", None, "dense", "", None, None), "no demo video or file 'nope'"),
    ]:
        with pytest.raises(gr.Error, match=reason):
            run_request(demo_session, *args)


@pytest.fixture(scope="module")
def demo_url(demo_session):
    from tempura_jax.webdemo import ui

    demo = ui.build_demo(demo_session)
    assert demo.analytics_enabled is False
    url = ui.launch(demo, "127.0.0.1", 0)
    assert url.startswith("http://127.0.0.1:")
    yield url
    demo.close()


def test_uploads_over_http_with_gradio_client(demo_url, demo_session, tmp_path):
    """An upload travels as a file through gradio's upload route into the
    handler; a broken one comes back as the app's error, naming the file."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    name = sorted(demo_session.videos)[0]
    video = handle_file(demo_session.videos[name].path)
    answer, _, table, gallery = client.predict(name, video, "masked", "", 2.0, 5.0, api_name="/run")
    direct = demo_session.run(demo_session.videos[name].path, "masked", mask=(2.0, 5.0))
    assert answer == (direct.answer or "(empty answer)")
    assert [r[0] for r in table["data"]] == ["predicted"] * len(direct.parsed["windows"])
    assert len(gallery) == len(direct.frames) >= 10
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    with pytest.raises(AppError, match="broken.webm"):
        client.predict(name, handle_file(str(broken)), "dense", "", None, None, api_name="/run")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver")
def test_demo_page_runs_dense_captions_and_draws_the_timeline(demo_url, demo_session, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    name = sorted(demo_session.videos)[0]  # the dropdown's default
    try:
        driver.get(demo_url)
        # the app is up once the dropdown shows its (first) demo video
        shown = WebDriverWait(driver, 60).until(
            lambda d: [
                e.get_attribute("value")
                for e in d.find_elements(By.CSS_SELECTOR, "#video input")
                if e.get_attribute("value")
            ]
        )
        assert shown == [name]
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(driver, 240).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#timeline img")
                or d.find_elements(By.CSS_SELECTOR, ".toast-body.error")
            )
        )
        assert not driver.find_elements(By.CSS_SELECTOR, ".toast-body.error")
        timeline = driver.find_element(By.CSS_SELECTOR, "#timeline img")
        src = timeline.get_attribute("src")
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert _colour_share(png, TRUTH) > 0.01  # the ground-truth events are drawn
        rows = WebDriverWait(driver, 30).until(lambda d: _table(d, "events"))
        truth = demo_session.videos[name].events
        direct = demo_session.run(name, "dense")  # greedy: the same answer as the page's
        shown_rows = [[r[0], float(r[1]), float(r[2]), r[3]] for r in rows]
        assert shown_rows == table_rows(direct.parsed, truth)
        assert [r[3] for r in rows if r[0] == "ground truth"] == [c for _, _, c in truth]
        answer = driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
        assert answer == (direct.answer or "(empty answer)")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#frames img")) >= 10
        shot = tmp_path / "tempura_demo.png"
        driver.execute_script("arguments[0].scrollIntoView()", timeline)
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        # grounding shows its query box; run without a query: the page names the reason
        assert not driver.find_elements(By.CSS_SELECTOR, "#query textarea")
        driver.find_element(By.XPATH, "//*[@id='task']//label[contains(., 'grounding')]").click()
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#query textarea")
        )
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        error = WebDriverWait(driver, 60).until(  # the toast's text renders after the toast
            lambda d: " ".join(
                e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body.error")
            )
        )
        assert "needs a query" in error
        # offline: every network request the page made went to the app itself
        urls = []
        for entry in driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        web = [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))]
        assert len(web) > 10 and all(u.startswith(demo_url) for u in web), web
    finally:
        driver.quit()
