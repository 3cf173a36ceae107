"""The dashboard in a real browser (Debian's headless Chromium, driven by
Playwright) against `gemini-flux demo`: every key's row with its fingerprint
and usage figures renders from live data, a key disabled from the page is
disabled in /status, and screenshots land in target/."""

import json
import os
import time
import urllib.request

from playwright.sync_api import sync_playwright

BASE = os.environ["FLUX_URL"]
SHOTS = os.environ.get("SHOT_DIR", "target")


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def browser(p):
    return p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


QUOTAS = ["rpm", "tpm", "rpd", "tpd", "otpm"]


def test_dashboard_shows_live_keys_and_disables_one():
    for _ in range(3):
        call("/generate", {"prompt": "x" * 4000})
    status = call("/status")
    with sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(BASE + "/dashboard")
        page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        rows = page.locator("#keys tbody tr")
        assert rows.count() == len(status["keys"])
        for key in status["keys"]:
            row = page.locator(f'#keys tbody tr[data-key="{key["index"]}"]')
            assert key["fingerprint"] in row.inner_text()
            # One bar a quota with a limit: Gemini's three on each chain
            # model; another provider's, those its lanes have (and its name).
            limits = [lane["limits"] for lane in key["models"].values()]
            bars = sum(1 for l in limits for q in QUOTAS if l[q] is not None and l[q] < 2**32 - 1)
            if key["provider"] == "gemini":
                assert bars == 3 * len(status["chain"])
            else:
                assert key["provider"] in row.inner_text()
            assert row.locator(".usage").count() == bars
        figures = page.locator("#keys .usage").all_inner_texts()
        assert any(not f.startswith("0 /") for f in figures), "some lane shows the tokens just spent"
        assert "250k" in " ".join(figures) or "250000" in " ".join(figures)
        page.wait_for_selector("#chart rect", timeout=15_000)
        page.screenshot(path=f"{SHOTS}/dashboard.png", full_page=True)

        page.locator('#keys tbody tr[data-key="2"] button.toggle').click()
        deadline = time.time() + 10
        while call("/status")["keys"][1]["state"] != "disabled":
            assert time.time() < deadline, "the click did not disable key 2"
            time.sleep(0.1)
        page.wait_for_selector('#keys tbody tr[data-key="2"] .state.disabled', timeout=5_000)
        page.locator('#keys tbody tr[data-key="2"] button.toggle').click()

        phone = b.new_page(viewport={"width": 390, "height": 844})
        phone.goto(BASE + "/dashboard")
        phone.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        phone.screenshot(path=f"{SHOTS}/dashboard-phone.png", full_page=True)
        b.close()


def test_dashboard_shows_a_batch_with_its_progress():
    items = [{"request": {"contents": [{"parts": [{"text": "abcd" * n}]}]}} for n in (1, 2, 3)]
    op = call("/v1beta/models/gemini-2.5-flash:batchGenerateContent",
              {"batch": {"displayName": "dashboard batch", "inputConfig": {"requests": {"requests": items}}}})
    batch = op["name"].split("/")[1]
    deadline = time.time() + 30
    while not call(f"/v1beta/batches/{batch}").get("done"):
        assert time.time() < deadline, "the batch did not end"
        time.sleep(0.2)
    with sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1280, "height": 900})
        page.goto(BASE + "/dashboard")
        row = page.locator(f'#batches tbody tr[data-batch="{batch}"]')
        row.wait_for(timeout=15_000)
        text = row.inner_text()
        assert "dashboard batch" in text and "succeeded" in text, text
        assert row.locator(".usage").inner_text() == "3 / 3"
        page.screenshot(path=f"{SHOTS}/dashboard-batches.png", full_page=True)
        b.close()
