"""The review page in a real browser (Debian's Chromium driven by Playwright) against `animetagnet review` as a process.

Keyboard flow (open, accept, reject, undo, add with autocomplete, next), a filter, a bulk
rename, and each time the caption file on disk afterwards.
"""

import os
from pathlib import Path

import pytest

from modelfactory import build_wd_model
from review_helpers import ReviewServer, make_folder

CHROMIUM = os.environ.get("ANIMETAGNET_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ANIMETAGNET_CHROMIUM)",
                allow_module_level=True)

pytestmark = [pytest.mark.slow]
sync_api.expect.set_options(timeout=20_000)
expect = sync_api.expect


@pytest.fixture
def server(tmp_path):
    model = build_wd_model(tmp_path / "tiny", size=32)
    folder = make_folder(tmp_path / "pics")
    with ReviewServer(folder, model) as srv:
        yield srv, folder


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def tags_on_disk(folder: Path, name: str) -> list[str]:
    return [t.strip() for t in (folder / name).read_text(encoding="utf-8").split(",") if t.strip()]


def test_keyboard_review_filter_and_bulk_edit(server, browser, tmp_path):
    srv, folder = server
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url + "/review")
    expect(page.locator("#grid .tile")).to_have_count(7)
    expect(page.locator('#grid .tile:has-text("broken.jpg") .badge.problem')).to_contain_text("not an image")
    expect(page.locator('#grid .tile:has-text("img2.jpg") .badge.problem')).to_contain_text("not UTF-8")

    # filter: captions with 1girl
    page.fill("#f-tag", "1girl")
    page.press("#f-tag", "Enter")
    expect(page.locator("#grid .tile")).to_have_count(3)
    page.locator("body").click(position={"x": 5, "y": 5})  # leave the input: keys go to the page

    # keyboard: open the first image (img0), work through its disagreements
    page.keyboard.press("Enter")
    expect(page.locator("#v-name")).to_have_text("img0.jpg")
    item = srv.item_by_name("img0.jpg")
    model_only = [m["tag"] for m in item["model"] if m["mark"] == "model"]
    assert len(model_only) >= 2, "the tiny model suggests tags the caption lacks"
    expect(page.locator("#v-model .rtag.cursor")).to_have_attribute("data-tag", model_only[0])
    page.keyboard.press("a")                                     # accept the first suggestion
    expect(page.locator(f'#v-caption .rtag[data-tag="{model_only[0]}"]')).to_have_count(1)
    assert tags_on_disk(folder, "img0.txt")[-1] == model_only[0]
    expect(page.locator("#v-model .rtag.cursor")).to_have_attribute("data-tag", model_only[1])
    page.keyboard.press("x")                                     # reject the next one
    expect(page.locator(f'#v-model .rtag.reject[data-tag="{model_only[1]}"]')).to_have_count(1)
    assert model_only[1] not in tags_on_disk(folder, "img0.txt")
    page.keyboard.press("u")                                     # undo the reject (no file change), then the accept
    expect(page.locator(f'#v-model .rtag.reject[data-tag="{model_only[1]}"]')).to_have_count(0)
    page.keyboard.press("u")
    expect(page.locator(f'#v-caption .rtag[data-tag="{model_only[0]}"]')).to_have_count(0)
    assert tags_on_disk(folder, "img0.txt") == ["1girl", "long_hair", "smile"]
    page.keyboard.press("U")                                     # redo the accept
    expect(page.locator(f'#v-caption .rtag[data-tag="{model_only[0]}"]')).to_have_count(1)
    assert model_only[0] in tags_on_disk(folder, "img0.txt")

    # add with autocomplete from the model's vocabulary
    page.keyboard.press("/")
    page.keyboard.type("very")
    expect(page.locator("#completions li").first).to_have_attribute("data-tag", "very_long_hair")
    page.keyboard.press("Enter")
    expect(page.locator('#v-caption .rtag[data-tag="very_long_hair"]')).to_have_count(1)
    assert "very_long_hair" in tags_on_disk(folder, "img0.txt")
    page.locator("#v-name").click()                              # focus back on the page
    page.keyboard.press("j")                                     # next image of the selection
    expect(page.locator("#v-name")).to_have_text("img4.jpg")
    page.keyboard.press("c")                                     # confirm and go on
    expect(page.locator("#v-name")).to_have_text("img5.jpg")
    page.keyboard.press("Escape")
    expect(page.locator("#grid-view")).to_be_visible()

    # bulk rename on the filtered selection
    page.fill("#f-tag", "solo")
    page.press("#f-tag", "Enter")
    expect(page.locator("#grid .tile")).to_have_count(2)
    page.select_option("#bulk-op", "rename")
    page.fill("#bulk-tag", "solo")
    page.fill("#bulk-new", "alone")
    page.click("#bulk button[type=submit]")
    expect(page.locator("#bulk-result")).to_contain_text("2 image(s) changed")
    assert tags_on_disk(folder, "img4.txt") == ["1girl", "alone"] and tags_on_disk(folder, "img5.txt") == ["1girl", "alone"]
    expect(page.locator('#freq tr[data-tag="alone"] td.count').first).to_have_text("2")
    expect(page.locator("#grid .tile")).to_have_count(0)         # the filter (has solo) now matches nothing

    # a caption changed on disk meanwhile: the page shows the conflict, the file keeps the outside edit
    page.fill("#f-tag", "")
    page.press("#f-tag", "Enter")
    page.locator('#grid .tile:has-text("img1.jpg")').click()
    expect(page.locator("#v-name")).to_have_text("img1.jpg")
    (folder / "img1.txt").write_text("edited elsewhere\n", encoding="utf-8")
    page.keyboard.press("/")
    page.keyboard.type("smile")
    page.keyboard.press("Enter")
    expect(page.locator("#conflict")).to_contain_text("changed on disk")
    expect(page.locator('#v-caption .rtag[data-tag="edited_elsewhere"]')).to_have_count(1)
    assert (folder / "img1.txt").read_text(encoding="utf-8") == "edited elsewhere\n"
    page.screenshot(path=str(Path(os.environ.get("ANIMETAGNET_SCREENSHOTS", tmp_path)) / "review.png"), full_page=True)
    assert not errors, errors
