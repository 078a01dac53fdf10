"""How the README's pictures of `lut serve` were made: a table served on loopback, its pages opened in Debian's
chromium (playwright), a screenshot of each.

    python -m docs.images.shoot --db bench/results/int8.sqlite --query 'backend=executorch&dtype=int8'

The pictures in this folder: the int8 bench's table (bench/int8.py: the family on this host's ExecuTorch/
XNNPACK in fp32 and int8, int8 calibrated on sampled networks).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).parent
PAGES = {"serve-model.png": "/model/dmasking_f3?{query}", "serve-rank.png": "/rank?{query}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--query", default="", help="conditions for every page, as a query string")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from bench.serve import free_port, start_server

    port = free_port()
    server = start_server(args.db, port, stdout=None)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)
            for name, path in PAGES.items():
                page.goto(url + path.format(query=args.query), wait_until="load")
                page.screenshot(path=str(args.out / name), full_page=False)
                print(f"wrote {args.out / name}")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
