"""A blind A/B study end to end (issue 18): export two runs' answers, let a scripted judge fill the page in
Debian's headless Chromium, score the downloaded CSV.

    python benchmarks/ab_demo.py RUN_A RUN_B --out DIR [--n 30] [--split dev] [--seed 11]

The judge is ``longer_valid_json_judge`` from tests/test_abtest.py: a TEST DOUBLE FOR A PERSON, not a judgment
of quality (it prefers the answer that is valid JSON and longer; a tie when equal, both bad when neither
parses).  It reads each item's two answers off the page, clicks the radio its rule picks, types its name and
saves; the CSV the browser downloads is scored with ``python -m sllmx.abtest score``.  Needs
/usr/bin/chromium, /usr/bin/chromedriver and selenium (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_abtest import longer_valid_json_judge  # noqa: E402


def fill(page: Path, downloads: Path, judge: str) -> Path:
    """Open ``page`` in headless Chromium, judge every item with the scripted judge, save; the CSV's path."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='sllmx-ab-profile-')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(page.as_uri())
        find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        n = len(driver.find_elements(By.CSS_SELECTOR, "[id^=item-]"))
        for i in range(1, n + 1):
            a = find(f"#answer-{i}-A .text").get_attribute("textContent")
            b = find(f"#answer-{i}-B .text").get_attribute("textContent")
            radio = find(f"#j-{i}-{longer_valid_json_judge(a, b)}")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", radio)
            radio.click()
        print(find("#progress").text, flush=True)
        find("#judge").send_keys(judge)
        find("#save").click()
        target = downloads / f"judgments-{judge}.csv"
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not target.exists():
            sys.exit(f"no download in {downloads}: {find('#status').text}")
        return target
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", required=True, help="the export folder (must not exist)")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--split", default="dev", choices=("dev", "test"))
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    out = Path(args.out)
    subprocess.run([sys.executable, "-m", "sllmx.abtest", "export", args.run_a, args.run_b, "--n", str(args.n),
                    "--split", args.split, "--seed", str(args.seed), "--out", str(out)], check=True)
    downloads = out / "downloads"
    downloads.mkdir()
    csv = fill(out / "index.html", downloads, "scripted-longer-valid-json")
    print(f"judgments: {csv}", flush=True)
    subprocess.run([sys.executable, "-m", "sllmx.abtest", "score", str(out), str(csv)], check=True)


if __name__ == "__main__":
    main()
