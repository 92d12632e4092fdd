"""Screenshots of an ``elastictok report`` page for the docs, taken in headless Chromium.

    elastictok report src/elastictok/assets/street.mp4 -o outputs/report.html \\
        --baseline baselines/default-fixed-0.25 baselines/default-fixed-0.5 baselines/default-full \\
        --thresholds mse:0.03,mse:0.05,mse:0.08,tokens:all
    python scripts/report_screenshots.py outputs/report.html docs/images

writes docs/images/report.png (the first input, paused at --frame) and, when the page has one,
docs/images/report-eval.png (the eval section). Needs selenium and Debian's chromium and
chromium-driver (``make browser``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frame", type=int, default=34, help="the frame to pause on (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1180)
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                f"--window-size={args.width},3000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        driver.get(args.page.resolve().as_uri())
        p = "window.elastictokReport.players[0]"
        driver.execute_script(f"{p}.pause(); {p}.seekFrame(arguments[0]);", args.frame)
        deadline = time.monotonic() + 20
        while not driver.execute_script(f"const o = {p}.original, r = {p}.recon; return !o.seeking && !r.seeking "
                                        "&& o.readyState >= 2 && r.readyState >= 2"):
            if time.monotonic() > deadline:
                raise SystemExit("the videos did not settle")
            time.sleep(0.1)
        args.out.mkdir(parents=True, exist_ok=True)
        driver.execute_script("document.querySelector('.table-wrap').style.maxHeight = '250px'")
        driver.find_element("css selector", "section.input").screenshot(str(args.out / "report.png"))
        print(args.out / "report.png")
        sections = driver.find_elements("css selector", "section.eval")
        if sections:
            sections[0].screenshot(str(args.out / "report-eval.png"))
            print(args.out / "report-eval.png")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
