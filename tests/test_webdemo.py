"""tempura-demo in headless Chromium (Debian's chromium + chromium-driver): the
page loads, one dense-caption request on a demo video runs, the stamped
frames, the answer and the timeline appear. The screenshot is kept under
the test's tmp dir (its path is printed)."""

import shutil

import pytest
from conftest import start_http_module

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1200,1400")  # fmt: skip


@pytest.fixture
def demo_server(demo_data, tmp_path):
    work = tmp_path / "demo"
    work.mkdir()
    (work / "data").symlink_to(demo_data["media_root"])
    args = ["--workdir", str(work), "--port", "0", "--max-new-tokens", "8"]
    proc, line = start_http_module("tempura_jax.webdemo.app", args)
    yield line.split()[-1]
    proc.terminate()
    proc.wait(30)


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver")
def test_demo_page_runs_dense_captions_and_draws_the_timeline(demo_server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get(demo_server)
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                        .get_attribute("data-ready") == "1")  # fmt: skip
        videos = [o.text for o in Select(driver.find_element(By.ID, "video")).options]
        assert videos and all(v.startswith("demo_") for v in videos)
        Select(driver.find_element(By.ID, "task")).select_by_value("dense")
        driver.find_element(By.ID, "run").click()
        timeline = driver.find_element(By.ID, "timeline")
        WebDriverWait(driver, 240).until(
            lambda d: (
                "done" in timeline.get_attribute("class") or d.find_element(By.ID, "error").text
            )
        )
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.execute_script("return arguments[0].naturalWidth", timeline) > 400
        assert driver.find_element(By.ID, "answer").text != ""
        assert len(driver.find_elements(By.CSS_SELECTOR, "#frames img")) >= 10
        shot = tmp_path / "tempura_demo.png"
        driver.execute_script("arguments[0].scrollIntoView()", timeline)
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
