"""The chat page in a real headless browser: Debian's Chromium, driven by Playwright, against a real server.

GPTCORE_SCREENSHOT=docs/serve.png makes the first test save its screenshot there (the README's picture).
"""

import json
import os
import shutil
from pathlib import Path

import openai
import pytest

from serving import running_server, tiny_checkpoint
from test_serve import health, wait_for

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-test.txt)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 900, "height": 620})
    page.goto(url)
    sync_api.expect(page.locator("#model")).not_to_have_text("connecting…")
    # counts every change to the conversation, so the test can tell a streamed reply from one set at once
    page.evaluate("""() => { window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('log'),
                                                            {subtree: true, childList: true, characterData: true}); }""")
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    return page, sent


def set_controls(page, temperature, top_k, max_tokens):
    page.fill("#temperature", str(temperature))
    page.fill("#top-k", str(top_k))
    page.fill("#max-tokens", str(max_tokens))


def test_page_streams_a_reply_with_the_chosen_settings(browser):
    """The committed checkpoint, sampled as a user would; the settings travel with the request."""
    with running_server(str(ROOT / "checkpoint" / "quickstart.pt"), name="quickstart") as (url, _):
        page, sent = open_page(browser, url)
        # the page sends no seed; at temperature 1 a reply may end at its first token, so the request gets one on
        # its way (the page's own request, as sent, is what `sent` records)
        page.route("**/v1/chat/completions",
                   lambda route: route.continue_(post_data=json.dumps({**json.loads(route.request.post_data),
                                                                       "seed": 0})))
        sync_api.expect(page.locator("#model")).to_have_text("quickstart")
        set_controls(page, 1.0, 50, 80)
        page.fill("#prompt", "How do I read a file in Python?")
        page.press("#prompt", "Enter")
        reply = page.locator(".msg.assistant").last
        sync_api.expect(reply).to_have_attribute("data-done", "true", timeout=60_000)
        assert reply.locator(".text").text_content().strip(), reply.inner_html()
        assert page.evaluate("window.updates") > 5  # the text grew piece by piece
        assert sent[-1]["temperature"] == 1.0 and sent[-1]["top_k"] == 50 and sent[-1]["max_tokens"] == 80
        assert sent[-1]["stream"] is True and sent[-1]["model"] == "quickstart"
        assert sent[-1]["messages"] == [{"role": "user", "content": "How do I read a file in Python?"}]
        if os.environ.get("GPTCORE_SCREENSHOT"):
            page.screenshot(path=str(ROOT / os.environ["GPTCORE_SCREENSHOT"]))
        page.close()


def test_stop_button_ends_the_generation_and_frees_its_slot(browser, tmp_path, caplog):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", block_size=8192)  # room for a reply of many seconds
    with running_server(ckpt, max_batch=1, max_queue=0) as (url, _), \
            caplog.at_level("INFO", logger="gptcore.serve"):
        page, sent = open_page(browser, url)
        # greedy: the page shows exactly the text the API gives for the same conversation
        set_controls(page, 0, 50, 12)
        page.fill("#prompt", "Hello there")
        page.press("#prompt", "Enter")
        reply = page.locator(".msg.assistant").last
        sync_api.expect(reply).to_have_attribute("data-done", "true")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                             temperature=0, max_tokens=12, extra_body={"top_k": 50})
        assert reply.locator(".text").text_content() == out.choices[0].message.content != ""

        set_controls(page, 0, 50, 8000)  # a reply far longer than the moment the test takes to press Stop
        page.fill("#prompt", "Tell me a long story")
        page.click("#send")
        reply = page.locator(".msg.assistant").last
        sync_api.expect(reply.locator(".text")).not_to_have_text("")
        sync_api.expect(page.locator("#stop")).to_be_enabled()
        page.click("#stop")
        sync_api.expect(reply).to_have_attribute("data-done", "true")
        sync_api.expect(reply.locator(".note")).to_have_text("(stopped)")
        sync_api.expect(page.locator("#send")).to_be_enabled()
        sync_api.expect(page.locator("#stop")).to_be_disabled()
        wait_for(lambda: health(url)["rows"] == 0, "the stopped request's row to free")
        wait_for(lambda: any("(disconnected)" in r.message for r in caplog.records), "the server to log the stop")
        line = next(r.message for r in caplog.records if "(disconnected)" in r.message)
        assert int(line.split("completion=")[1].split()[0]) < 8000

        # the conversation goes on: the stopped reply is part of it, and the next one streams
        page.fill("#prompt", "And then?")
        set_controls(page, 0, 50, 5)
        page.press("#prompt", "Enter")
        sync_api.expect(page.locator(".msg.assistant").last).to_have_attribute("data-done", "true")
        assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
        page.close()
