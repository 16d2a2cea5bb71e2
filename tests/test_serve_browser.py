"""The web page and the gallery in a real browser (Debian's Chromium driven by Playwright) against a real server."""

import os
import shutil
from pathlib import Path

import pytest

from serve_helpers import ServerThread, real_images

CHROMIUM = os.environ.get("ANIMETAGNET_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ANIMETAGNET_CHROMIUM)",
                allow_module_level=True)
if not real_images():
    pytest.skip("../shared/data/danbooru-512px is absent (set ANIMETAGNET_DATA): the page test uploads a real image",
                allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
sync_api.expect.set_options(timeout=20_000)  # a loaded CI machine can be slow; waits end as soon as they hold


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from animetagnet import Tagger
    from animetagnet.serve.app import create_app
    from animetagnet.serve.gallery import index_folder
    from modelfactory import build_wd_model

    tmp = tmp_path_factory.mktemp("browser")
    tagger = Tagger(build_wd_model(tmp / "tiny", size=32))
    pics = tmp / "pics"
    pics.mkdir()
    for p in real_images():
        shutil.copy(p, pics / p.name)
    db = tmp / "gallery.db"
    index_folder(db, str(pics), tagger)
    with ServerThread(create_app(tagger, gallery_db=str(db))) as server:
        yield server, tagger, tmp


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot_dir(tmp: Path) -> Path:
    d = Path(os.environ.get("ANIMETAGNET_SCREENSHOTS", tmp))
    d.mkdir(parents=True, exist_ok=True)
    return d


def expected_tags(tagger, data: bytes, general: float, character: float) -> dict[str, set[str]]:
    probs = tagger.predict(tagger.prepare(data)[None])[0]
    out = {"general": set(), "character": set()}
    for i, tag in enumerate(tagger.vocab):
        label = tag.category.label
        thr = character if label == "character" else general
        if label in out and probs[i] >= thr:
            out[label].add(tag.name)
    return out


def shown(page, category) -> set[str]:
    return set(page.locator(f".card:not(.error) .group.{category} .tag").evaluate_all(
        "els => els.map(e => e.dataset.tag)"))


def test_upload_tags_slider_and_copy(setup, browser):
    from animetagnet.formatting import CaptionStyle
    from animetagnet.results import TagResult

    server, tagger, tmp = setup
    image = real_images()[0]
    data = image.read_bytes()
    junk = tmp / "notes.txt"
    junk.write_text("this is not an image")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#model")).to_contain_text("tiny")

    page.set_input_files("#files", [str(image), str(junk)])  # several at once
    sync_api.expect(page.locator(".card:not(.error) .tag").first).to_be_visible()
    sync_api.expect(page.locator(".card.error")).to_contain_text("not an image")
    sync_api.expect(page.locator(".card:not(.error) .rating.top")).to_have_count(1)

    want = expected_tags(tagger, data, 0.35, 0.85)
    assert shown(page, "general") == want["general"]
    assert shown(page, "character") == want["character"]
    assert page.locator(".card:not(.error) .bar > span").count() == sum(len(v) for v in want.values())

    # the slider filters live (no upload: the page keeps every score above 0.05)
    page.locator("#thr-general").fill("0.05")
    low = expected_tags(tagger, data, 0.05, 0.85)
    assert len(low["general"]) > len(want["general"])
    sync_api.expect(page.locator(".card:not(.error) .group.general .tag")).to_have_count(len(low["general"]))
    assert shown(page, "general") == low["general"]

    # the caption follows the slider and the chosen formatting
    page.check("#opt-spaces")
    scores = {name: float(p) for name, p in zip(tagger.vocab.names, tagger.predict(tagger.prepare(data)[None])[0])}
    result = TagResult(tags={"general": {n: scores[n] for n in low["general"]},
                             "character": {n: scores[n] for n in low["character"]}})
    caption = CaptionStyle(spaces=True).caption(result)
    area = page.locator(".card:not(.error) .caption-text")
    page.wait_for_function("want => document.querySelector('.card:not(.error) .caption-text').value === want", arg=caption)
    assert "_" not in area.input_value().replace("^_^", "")

    page.click(".card:not(.error) button.copy")
    sync_api.expect(page.locator(".card:not(.error) .copied")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == caption

    page.screenshot(path=str(shot_dir(tmp) / "page.png"), full_page=True)
    page.locator("#thr-general").fill("1")
    sync_api.expect(page.locator(".card:not(.error) .group.general .tag")).to_have_count(0)
    sync_api.expect(page.locator(".card:not(.error) .group.general")).to_contain_text("none at")
    context.close()


def test_gallery_page_search_and_click_a_tag(setup, browser):
    server, tagger, tmp = setup
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/gallery")
    n = len(real_images())
    sync_api.expect(page.locator(".tile")).to_have_count(n)
    sync_api.expect(page.locator("#total")).to_contain_text(f"{n} images match")
    # every thumbnail really loaded
    page.wait_for_function("() => [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shot_dir(tmp) / "gallery.png"), full_page=True)

    first = page.locator("#counts li").first
    tag = first.locator("a").get_attribute("data-tag")
    count = int(first.locator(".count").inner_text())
    first.locator("a").click()
    sync_api.expect(page.locator("#q")).to_have_value(tag)
    sync_api.expect(page.locator(".tile")).to_have_count(count)
    # exclude it with the minus button: the complement
    page.locator("#counts li", has=page.locator(f"a[data-tag='{tag}']")).locator("button").click()
    sync_api.expect(page.locator("#q")).to_have_value(f"-{tag}")
    sync_api.expect(page.locator(".tile")).to_have_count(n - count)
    # a bad query shows the server's message
    page.fill("#q", "rating:weird")
    page.press("#q", "Enter")
    sync_api.expect(page.locator(".banner")).to_contain_text("unknown rating")
    page.close()


def test_offline_api_reference_lists_the_endpoints(setup, browser):
    server, _, tmp = setup
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/api")
    sync_api.expect(page.locator("#endpoints code", has_text="POST /v1/tag")).to_have_count(1)
    sync_api.expect(page.locator("table.params code", has_text="general_threshold").first).to_be_visible()
    page.screenshot(path=str(shot_dir(tmp) / "api.png"))
    page.close()
