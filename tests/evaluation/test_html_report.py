"""The self-contained HTML report, loaded in a real headless browser (Debian's chromium + chromedriver, selenium).

The browser test skips when chromium, chromedriver or selenium are absent (CI images may lack them); the
structure tests run everywhere.
"""

from __future__ import annotations

import base64
import re
import shutil
import zlib

import numpy as np
import pytest

from monai_contreg.evaluation.html_report import encode_volume, write_html_report
from monai_contreg.evaluation.quality import QualityReport

SHAPE = (10, 12, 14)


def _report() -> QualityReport:
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    fixed = k / (SHAPE[2] - 1)  # the slice index along axis 2 is written in the fixed image's intensity
    warped = i / (SHAPE[0] - 1)
    maps = {"fixed": fixed, "warped": warped, "before": warped, "jacobian": np.ones(SHAPE), "residual_mm": np.zeros(SHAPE),
            "region": np.ones(SHAPE, bool)}
    signals = {"mind_ratio": 0.3, "residual_mm": 0.9, "dice": 0.98, "sdlogj": 0.05, "folding_percent": 0.0}
    return QualityReport(0.42, (0.3, 0.61), "ok", [], signals, "fixed mask", 0.9, 1.0, maps=maps, coarse_spacing=(3.0, 3.0, 3.0))


def test_encode_volume_round_trip():
    v = np.linspace(0, 1, 24).reshape(2, 3, 4)
    enc = encode_volume(v, 0.0, 1.0)
    raw = np.frombuffer(zlib.decompress(base64.b64decode(enc["data"])), np.uint8).reshape(enc["shape"])
    np.testing.assert_array_equal(raw, np.round(v * 255).astype(np.uint8))
    assert enc["shape"] == [2, 3, 4]


def test_report_is_one_file_without_network(tmp_path):
    out = write_html_report(tmp_path / "r.html", [{"name": "p1", "quality": _report(), "tre_mm": 0.5}])
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=['\"]?https?://", text)  # nothing fetched from anywhere
    assert "<table id='pairs'>" in text and 'id="cv-0-2"' in text and 'id="sl-0-0"' in text
    assert list(tmp_path.iterdir()) == [out]


def test_report_needs_maps(tmp_path):
    rep = _report()
    rep.maps = None
    with pytest.raises(ValueError, match="keep_maps"):
        write_html_report(tmp_path / "r.html", [{"name": "p1", "quality": rep}])


def _driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def test_report_in_browser_slider_shows_the_slice(tmp_path):
    out = write_html_report(tmp_path / "report.html", [
        {"name": "pair_a", "quality": _report(), "tre_mm": 0.5},
        {"name": "pair_b", "quality": _report(), "tre_mm": 2.5},
    ])
    driver = _driver(tmp_path)
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(out.as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        canvas = driver.find_element(By.ID, "cv-0-2")
        start = int(canvas.get_attribute("data-slice"))
        assert start == SHAPE[2] // 2
        slider = driver.find_element(By.ID, "sl-0-2")
        slider.click()  # focus; a click may move the thumb, so the slice is read back from the page
        for _ in range(3):
            slider.send_keys(Keys.ARROW_RIGHT)
        s = int(slider.get_attribute("value"))
        assert int(canvas.get_attribute("data-slice")) == s != start
        # the overlay's red channel is the fixed image, whose value encodes the slice index along axis 2
        red = driver.execute_script(
            "const c = document.getElementById('cv-0-2'); return c.getContext('2d').getImageData(1, 1, 1, 1).data[0];")
        assert red == round(s / (SHAPE[2] - 1) * 255)
        # the green channel is the warped image: its value encodes the column (axis 0) drawn at x = 5
        green = driver.execute_script(
            "const c = document.getElementById('cv-0-2'); return c.getContext('2d').getImageData(5, 1, 1, 1).data[1];")
        assert green == round(5 / (SHAPE[0] - 1) * 255)
        assert "slice %d / %d" % (s + 1, SHAPE[2]) in driver.find_element(By.ID, "lb-0-2").text
        # sorting by TRE descending puts pair_b first
        header = driver.find_elements(By.CSS_SELECTOR, "#pairs th")[1]
        header.click()
        header.click()
        first = driver.find_element(By.CSS_SELECTOR, "#pairs tbody tr td").text
        assert first == "pair_b"
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 1000
    finally:
        driver.quit()
