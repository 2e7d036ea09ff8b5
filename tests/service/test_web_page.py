"""The web page at `/`: served by the API (TestClient), and in a real headless browser (Debian's chromium driven
by Playwright) against a live server with a finished job: the rows, the front plot, a plan's bar chart, an
export, the stored token, a screenshot that is not blank and shows the plot, and no request off the server."""

from __future__ import annotations

import io
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from PIL import Image

from prunesearch.service import crud
from prunesearch.service.api.main import create_app
from prunesearch.service.api.routes.web import WEB_DIR
from prunesearch.service.auth import create_token
from prunesearch.service.db import session_scope

from .finished_job import LAYERS, seed_finished_job
from .livehttp import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
FRONT_BLUE = (0x1F, 0x6F, 0xD1)  # --front in style.css


def test_the_page_and_its_files_are_served_and_the_api_docs_still_are(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<svg id="front-plot"' in page.text and '"web/app.js"' in page.text
    script = api.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "Authorization" in script.text  # the stored token goes with every request
    assert api.get("/web/style.css").status_code == 200
    assert api.get("/web/missing.js").status_code == 404
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths and all(p.startswith(("/v1", "/healthz", "/readyz", "/metrics")) for p in paths)


def test_every_file_of_the_page_ships_in_the_package():
    """A non-editable install carries the page: each of its files matches the package-data globs."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["prunesearch.service"]
    names = sorted(path.name for path in WEB_DIR.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(names)
    assert all(any(fnmatch(f"web/{name}", glob) for glob in globs) for name in names)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def live(settings):
    """A live server with a finished job and, newer, a queued one; (URL, finished job id, queued job id)."""
    job_id = seed_finished_job(settings)
    with session_scope(settings.db_url) as session:
        spec = crud.get_job(session, job_id=job_id).spec
        queued = crud.create_job(session, spec=spec, parallelism=1, owner=None, idempotency_key=None).id
    with live_server(create_app(settings)) as url:
        yield url, job_id, queued


def _colours(png: bytes) -> dict[tuple[int, int, int], int]:
    """Pixel count by colour."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {colour: count for count, colour in image.getcolors(image.width * image.height)}


def _near(colour: tuple[int, int, int], target: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(colour, target, strict=True))


@pytest.mark.slow
@needs_chromium
def test_page_renders_jobs_front_and_plans_and_exports_a_point(live, browser, settings, tmp_path):
    url, job_id, queued = live
    pareto = _pareto(url, job_id)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{url}/")

    row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
    row.wait_for()
    assert page.locator("#jobs tbody tr").count() == 2
    assert "queued" in page.locator(f'#jobs tr[data-job-id="{queued}"]').inner_text()
    assert "succeeded" in row.inner_text() and "28 / 28" in row.inner_text()
    page.locator("#front-plot .point.front").first.wait_for()
    plot = page.locator("#front-plot")
    assert plot.locator(".point.baseline").count() == 3  # dense, uniform-0.5, shortgpt-1
    assert plot.locator(".point.healed").count() == len(pareto["healed_front"]) == 2
    on_front = [p for p in pareto["front"] if not p["baseline"]]
    assert plot.locator(".point.front").count() == len(on_front)
    assert plot.locator(".point.trial").count() > 0
    assert page.locator("#front tbody tr").count() == len(pareto["front"])

    # Hovering a point draws its plan: one heads bar and one MLP bar per kept layer, scaled to the dense widths.
    point = on_front[0]
    plot.locator(f'.point.front[data-trial="{point["trial"]}"]').hover()
    assert f"Trial {point['trial']}" in page.locator("#plan-title").inner_text()
    kept = [layer for layer in point["plan"]["layers"] if layer["heads"] or layer["ffn"]]
    bars = page.locator("#plan-chart rect.bar")
    assert bars.count() == 2 * len(kept)
    titles = [bars.nth(i).locator("title").text_content() for i in range(bars.count())]
    assert titles[0] == f"heads {kept[0]['heads']} / 4" and titles[1] == f"MLP width {kept[0]['ffn']} / 256"
    assert page.locator("#plan-chart .removed").count() == LAYERS - len(kept)

    # Export the fastest front point: the page posts it and shows the queued export.
    fastest = pareto["front"][0]["trial"]
    with page.expect_response(lambda r: r.url.endswith(f"/v1/jobs/{job_id}/exports")) as posted:
        page.locator(f'#front tr[data-trial="{fastest}"] button.export').click()
    assert posted.value.status == 202 and posted.value.request.method == "POST"
    export_id = posted.value.json()["id"]
    page.locator(f'[data-export-id="{export_id}"]').wait_for()
    assert "queued" in page.locator(f'[data-export-id="{export_id}"]').inner_text()
    with session_scope(settings.db_url) as session:
        exports = crud.list_exports(session, job_id=job_id)
        assert [(e.id, e.trial, e.dtype) for e in exports] == [(export_id, fastest, "fp32")]

    # A saved token goes with every request as a Bearer header (a real one: the API checks it).
    with session_scope(settings.db_url) as session:
        _, token = create_token(session, name="admin", admin=True)
    page.fill("#token", token)
    with page.expect_request(lambda r: "/v1/jobs?" in r.url) as listed:
        page.click("#token-form button")
    assert listed.value.headers.get("authorization") == f"Bearer {token}"

    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert len(_colours((tmp_path / "page.png").read_bytes())) > 50, "the page screenshot is blank"
    colours = _colours(plot.screenshot(path=str(tmp_path / "plot.png")))
    pixels = sum(colours.values())
    drawn = 1 - colours.get((255, 255, 255), 0) / pixels
    blue = sum(count for colour, count in colours.items() if _near(colour, FRONT_BLUE))
    assert len(colours) > 20 and drawn > 0.02 and blue > 100, (len(colours), drawn, blue)

    # The queued job has nothing to plot yet; picking it says so and empties the front table.
    page.locator(f'#jobs tr[data-job-id="{queued}"]').click()
    page.get_by_text("no finished trials yet").wait_for()
    assert page.locator("#front tbody tr").count() == 0 and queued[:8] in page.locator("#job-title").inner_text()
    assert not errors, errors
    assert all(r.startswith(url) or r.startswith("data:") for r in requests), requests  # works offline


def _pareto(url: str, job_id: str) -> dict:
    import httpx

    return httpx.get(f"{url}/v1/jobs/{job_id}/pareto", timeout=10).json()
