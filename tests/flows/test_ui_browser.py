"""The Prefect UI in a real browser: a backfill started from its custom-run form.

A real `prefect server` serves the UI; the deployments of deployments/prefect.yaml are deployed
and a worker runs them against the offline world. Debian's chromium, driven by playwright,
opens the UI at its root as a user would, goes to the backfill deployment, opens Run > Custom
run, picks the dates in the form's date pickers and the bands in its multi-select, submits,
and follows the run page until it shows Completed. Screenshots go to test-output/ui/.

chromium comes from `make test` (scripts/install-browser.sh). Without it the test skips, and
fails under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import get_args

import pytest
from flow_helpers import WORLD_BBOX
from flows.params import BandName
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from prefect_server import DEPLOYMENTS, REPO, PrefectServer, running_server

from scenestore.stac import StacStoreManager

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM = os.environ.get("SCENESTORE_CHROMIUM", "/usr/bin/chromium")
#: Keep chromium off the (closed) network: no updates, sync, QUIC or first-run calls.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OUTPUT = REPO / "test-output" / "ui"
#: What the test picks in the form: a range holding only some of the world's scenes, and
#: bands other than the deployment's defaults (B02 B03 B04 B08 SCL).
START, END = date(2024, 6, 1), date(2024, 6, 5)
CHOSEN_BANDS = ["B04", "B11"]
ALL_BANDS = list(get_args(BandName))
#: Seconds the backfill (and its window's ingest run) may take once submitted.
RUN_DEADLINE_S = 120


@pytest.fixture
def chromium() -> str:
    """Debian's chromium; skipped when missing, failed under CI (make test installs it)."""
    if not os.access(CHROMIUM, os.X_OK):
        reason = (f"{CHROMIUM} is missing; `make test` installs it (scripts/install-browser.sh, "
                  f"as root), or run `apt-get install -y chromium`.")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A real server with the UI, the project's deployments and a worker."""
    began = time.monotonic()
    with running_server(tmp_path, ui=True) as server:
        healthy_s = time.monotonic() - began
        deployed = server.deploy_with_worker(pool_from_cli=False)
        assert all(name in deployed for name in DEPLOYMENTS), deployed
        print(f"\nserver healthy in {healthy_s:.0f} s, deployed in "
              f"{time.monotonic() - began - healthy_s:.0f} s more")
        yield server


@pytest.fixture
def page(chromium: str) -> Iterator[object]:
    """A page of a fresh headless chromium (its own profile, so the UI's defaults)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1700},
            )
            context.set_default_timeout(30_000)
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def field(page, name: str):
    """The form group of one parameter (its label, description and widget)."""
    label = page.locator("label").filter(has_text=re.compile(rf"^{name}( \(Optional\))?$"))
    # Nested forms (bbox, options) are groups inside groups: the innermost is the last one.
    return page.locator("div.group").filter(has=label).last


def pick_date(page, name: str, day: date) -> None:
    """Choose ``day`` in the date picker of parameter ``name``: open it, pick year, month, day."""
    page.get_by_label(name, exact=True).click()
    calendar = page.get_by_role("dialog")
    calendar.get_by_role("grid").wait_for()
    calendar.get_by_label("Choose the Year").select_option(str(day.year))
    calendar.get_by_label("Choose the Month").select_option(str(day.month - 1))
    calendar.locator(f'td[data-day="{day.isoformat()}"]:not([data-outside]) button').click()


def show_run_graph(page) -> None:
    """Wait until the run page's graph is drawn (its canvas mounted, two frames painted)."""
    page.locator('[data-slot="card-content"] canvas').first.wait_for()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def close_popup(page, popup) -> None:
    page.keyboard.press("Escape")
    popup.wait_for(state="hidden")


def test_backfill_from_the_custom_run_form_completes(chromium, ui_server, page, world, tmp_path):
    server = ui_server
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT.glob("*.png"):
        old.unlink()
    store = tmp_path / "store"

    # As a user: the UI's root, Deployments, the backfill, Run > Custom run.
    opened = time.monotonic()
    page.goto(server.url + "/")
    page.get_by_role("link", name="Deployments").click()
    # The list links each deployment and its flow, both named backfill: take the deployment.
    page.locator('a[href*="/deployments/deployment/"]').filter(
        has_text=re.compile(r"^backfill$")).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    page.get_by_role("heading", name="Parameters").wait_for()

    page.get_by_label("store", exact=True).fill(str(store))

    # Dates: date pickers (a button opening a calendar), not free text.
    for name, day in (("start", START), ("end", END)):
        trigger = page.get_by_label(name, exact=True)
        assert trigger.get_attribute("aria-haspopup") == "dialog", f"{name}: no date picker"
        assert trigger.inner_text().strip() == "Pick a date"
        pick_date(page, name, day)
        if name == "start":
            page.screenshot(path=OUTPUT / "form-date-picker.png")
        close_popup(page, page.get_by_role("dialog"))
    assert page.get_by_label("start", exact=True).inner_text().strip() == "June 1st, 2024"
    assert page.get_by_label("end", exact=True).inner_text().strip() == "June 5th, 2024"

    for side, value in WORLD_BBOX.items():
        page.get_by_label(side.capitalize(), exact=True).fill(str(value))

    # Bands: a multi-select of the 13 bands with the deployment's defaults as chips.
    bands = field(page, "bands")
    assert bands.locator("textarea, .cm-editor").count() == 0, "bands is a JSON editor"
    select = page.get_by_role("button", name="Select bands")
    assert select.get_attribute("aria-haspopup") == "listbox"
    for band in ("B02", "B03", "B04", "B08", "SCL"):
        if band not in CHOSEN_BANDS:
            bands.get_by_role("button", name=f"Remove {band} tag").click()
    select.click()
    listbox = page.get_by_role("listbox")
    assert listbox.get_by_role("option").all_inner_texts() == ALL_BANDS
    for band in CHOSEN_BANDS:
        if not bands.get_by_title(band, exact=True).count():
            listbox.get_by_role("option", name=band, exact=True).click()
    page.screenshot(path=OUTPUT / "form-bands.png")
    close_popup(page, listbox)
    chips = bands.locator('[data-slot="badge"]').all_inner_texts()
    assert [c.strip() for c in chips] == CHOSEN_BANDS

    stac_url = field(page, "stac_url")
    stac_url.get_by_role("tab", name="str").click()
    stac_url.locator("textarea, input").first.fill(world.stac_url)
    field(page, "poll_seconds").locator("input").fill("1")

    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=OUTPUT / "form.png")
    page.screenshot(path=OUTPUT / "form-full.png", full_page=True)

    page.get_by_role("button", name="Submit").click()
    submitted = time.monotonic()
    filled_s = submitted - opened
    page.get_by_role("link", name="View run").click()
    page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]{36}"))
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]

    # Follow the run page (it refreshes itself) until its state badge says Completed.
    badge = page.locator('[data-slot="badge"]').filter(
        has_text=re.compile(r"^(Completed|Failed|Crashed|Cancelled)$"))
    remaining_s = RUN_DEADLINE_S - (time.monotonic() - submitted)
    try:
        badge.first.wait_for(timeout=remaining_s * 1000)  # playwright polls the page
    except PlaywrightTimeout:
        page.screenshot(path=OUTPUT / "timeout.png")
        raise AssertionError(f"run {run_id} not final in the UI after {RUN_DEADLINE_S} s: "
                             f"{server.flow_run(run_id)['state']}\n{server.tail()}") from None
    assert badge.first.inner_text().strip() == "Completed", server.tail()
    ran_s = time.monotonic() - submitted
    # The page updated itself to Completed. Reloaded once the run's last log line has
    # reached the API (logs are sent in batches, after the state), it shows all of them.
    server.wait_log(run_id, "Backfill done", deadline_s=30)
    page.reload()
    page.get_by_text("Backfill done").wait_for()
    show_run_graph(page)
    page.screenshot(path=OUTPUT / "completed.png")
    page.get_by_role("tab", name="Subflow Runs").click()
    window_run = page.get_by_role("link", name=f"ingest {START}..{END}")
    window_run.wait_for()
    show_run_graph(page)
    page.screenshot(path=OUTPUT / "completed-windows.png")
    print(f"\nUI screenshots in {OUTPUT}; form filled in {filled_s:.0f} s, run Completed in the "
          f"UI {ran_s:.0f} s after submit (run {run_id})")

    # What a user would check: the run as the API has it, and the store.
    run = server.flow_run(run_id)
    assert run["state"]["type"] == "COMPLETED", server.tail()
    assert run["parameters"]["start"] == START.isoformat()
    assert run["parameters"]["end"] == END.isoformat()
    assert run["parameters"]["bands"] == CHOSEN_BANDS
    windows = server.child_runs(run_id)
    assert [(w["parameters"]["start"], w["state"]["type"]) for w in windows] == [
        (START.isoformat(), "COMPLETED")]

    mgr = StacStoreManager(ALL_BANDS, store, stac_url=world.stac_url)
    in_range = [i for i in world.items if START <= i.datetime.date() <= END]
    assert in_range and len(in_range) < len(world.items), "the range selects some scenes"
    stored = {i.id: sorted(set(ALL_BANDS) - set(mgr.missing_bands(mgr.identifier(i))))
              for i in world.items if mgr.exists(mgr.identifier(i))}
    assert stored == {i.id: sorted(CHOSEN_BANDS) for i in in_range}
