"""The search page in a real headless Chromium (Debian's, driven by Playwright): type a query and see results,
upload an image and see similar ones, classify an image against typed labels. Screenshots go to artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

import altclip
from altclip.index import ImageIndex
from altclip.inference import Embedder
from altclip.server import ServerSettings
from serving import running_server
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
ARTIFACTS = Path(os.environ.get("ALTCLIP_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a headless Chromium on a machine without network or display (and as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.slow,  # end to end: a browser
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    checkpoint = altclip.write_random_checkpoint("tiny", root / "ckpt", seed=3)
    model, processor = altclip.load(checkpoint)
    embedder = Embedder(model, processor, str(checkpoint))
    photos = root / "photos"
    make_images(photos, 4)
    for p in PHOTOS.glob("*.jpg"):
        (photos / p.name).write_bytes(p.read_bytes())
    with ImageIndex(root / "index") as index:
        index.update([photos], embedder)
    return embedder, root / "index"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_search_and_classify_in_the_page(setup, browser):
    from playwright.sync_api import expect

    embedder, index = setup
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_server(ServerSettings(index=str(index)), embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        # Waits go through locators: the page's Content-Security-Policy forbids the eval wait_for_function needs.
        expect(page.locator("#info")).to_contain_text("13 photos indexed")

        page.fill("#query", "一只猫")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .hit img[src^='blob:']")
        assert page.locator("#results .hit").count() == 13
        assert page.inner_text("#search-status") == "13 results"
        scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True)

        page.set_input_files("#search-file", str(PHOTOS / "coffee.jpg"))
        expect(page.locator("#results .name").first).to_have_text("coffee.jpg")
        assert page.locator("#results .score").first.inner_text() == "1.000"

        page.fill("#labels", "猫, dog, café")
        page.set_input_files("#classify-file", str(PHOTOS / "cat.jpg"))
        page.click("#classify-form button")
        page.wait_for_selector("#labels-out li.label")
        labels = page.locator("#labels-out li.label").all_inner_texts()
        assert len(labels) == 3 and all("%" in t for t in labels)
        assert {t.split(" — ")[0] for t in labels} == {"猫", "dog", "café"}
        page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)
        assert errors == []


def test_page_with_a_token(setup, browser):
    from playwright.sync_api import expect

    embedder, index = setup
    with running_server(ServerSettings(index=str(index), token="letmein"), embedder) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#token-box:not([hidden])")
        page.fill("#query", "cat")
        page.press("#query", "Enter")
        expect(page.locator("#search-status")).to_have_class("muted error")
        assert "401" in page.inner_text("#search-status")
        page.fill("#token", "letmein")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .hit img[src^='blob:']")
        page.screenshot(path=str(ARTIFACTS / "search-page-token.png"))


def offline(page, url: str) -> list[str]:
    """Lets the page reach only the server at ``url``: every other request is refused and recorded, as on a machine
    without network. Returns the list it records into."""
    elsewhere: list[str] = []

    def route(r):
        if r.request.url.startswith(url + "/") or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            elsewhere.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return elsewhere


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_offline(setup, browser, path):
    """Swagger UI and ReDoc come from the server itself: with everything else unreachable they still render every
    operation of /openapi.json, and they ask for nothing elsewhere."""
    from playwright.sync_api import expect

    embedder, index = setup
    with running_server(ServerSettings(index=str(index), token="t"), embedder) as url:
        operations = sum(len(methods) for methods in httpx.get(url + "/openapi.json").json()["paths"].values())
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        elsewhere = offline(page, url)
        page.goto(url + path)
        if path == "/docs":
            expect(page.locator(".opblock")).to_have_count(operations, timeout=30_000)
            expect(page.locator(".opblock-summary-path", has_text="/v1/embeddings")).to_be_visible()
            expect(page.locator("button.authorize")).to_be_visible()  # the bearer token can be entered
        else:
            expect(page.locator("[data-section-id^='operation/']")).to_have_count(operations, timeout=30_000)
            expect(page.locator("h2", has_text="OpenAI-compatible embeddings of texts and images")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / f"api{path.replace('/', '-')}.png"))
        # ReDoc's sidebar shows Redocly's logo from its CDN (and hides it when that fails): the page's
        # Content-Security-Policy stops that request before it is made, and the browser says so.
        blocked_logo = [e for e in errors if "cdn.redoc.ly/redoc/logo-mini.svg" in e and "Content Security Policy" in e]
        assert elsewhere == [] and [e for e in errors if e not in blocked_logo] == []
