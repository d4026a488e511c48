"""Lesson 06 in JupyterLab, as a learner runs it: the kit, Chromium, Shift+Enter.

``notifylab kit`` runs as a subprocess, launched as ``make up`` launches it
(two instances and a worker on free ports under a test prefix, JupyterLab on
a free port), on a copy of the kit folder: jupyter/ from the repository and
a notebooks/ of its own, so nothing JupyterLab saves while the cells run
lands in the repository. The test opens the URL the kit prints (a notebook
and the React client's tab side by side), gives the notebook more room,
opens lesson 06, runs it cell by cell up to its first operation (signing ann
in to the React client in the "notifylab" tab once the lesson has made her),
and sees the same operation in the widget panel (its progress bar moving
step by step to 100%) and in the React client (succeeded), both in the
notebook's frame and in the tab beside it. Then it takes the README's
screenshot, stops the kit with SIGINT as Ctrl-C would, and checks that its
ports are free. Every wait is bounded; the whole takes about a minute.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import FrameLocator, Locator, Page, expect

from browser_support import PASSWORD, ROOT
from notifylab.lab import free_port
from support import KIT_URL, new_prefix, running_kit, wait_ports_free

pytestmark = [pytest.mark.browser, pytest.mark.services]

LESSON = "06-panel-beside-react.ipynb"
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOT = ROOT / "docs" / "screenshot-jupyterlab.png"
CELL_MS = 60_000  # one cell: the lesson bounds its own waits well below this
VIEWPORT = {"width": 1400, "height": 900}


# --- the kit -------------------------------------------------------------------


@pytest.fixture
def kit_dir(tmp_path: Path) -> Path:
    """The kit's folder as ``--kit-dir`` takes it: the repository's jupyter/,
    and a copy of the lessons (JupyterLab saves the notebooks it runs)."""
    folder = tmp_path / "kit"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "jupyter").symlink_to(ROOT / "jupyter")
    for name in ("00-start-here.ipynb", LESSON):  # the workspace opens 00
        shutil.copy(NOTEBOOKS / name, folder / "notebooks" / name)
    return folder


@pytest.fixture
def kit(services: None, frontend_dist: Path, kit_dir: Path, tmp_path: Path) -> Iterator[dict]:
    """The kit, up: its URL, token, ports and process. Stopped after the test."""
    a, b, jupyter = free_port(), free_port(), free_port()
    env = {
        "NOTIFYLAB_PREFIX": new_prefix(),  # removed after the run (tests/conftest.py)
        "NOTIFYLAB_KIT_PORTS": f"{a},{b}",  # what Cluster.kit() in the kernel joins
        "NOTIFYLAB_STATIC_DIR": str(frontend_dist),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "PYTHONUNBUFFERED": "1",
    }
    args = ["--ports", f"{a},{b}", "--jupyter-port", str(jupyter), "--no-browser", "--kit-dir", str(kit_dir)]
    with running_kit(*args, env=env) as process:
        m = process.wait_for(KIT_URL)
        process.descendants()
        yield {
            "url": m.group(0),
            "base": m["base"],
            "token": m["token"],
            "ports": [a, b, jupyter],
            "process": process,
        }


# --- JupyterLab ------------------------------------------------------------------


def lesson_cells() -> list[dict]:
    return json.loads((NOTEBOOKS / LESSON).read_text())["cells"]


def first_code_cell(cells: list[dict], text: str) -> int:
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and text in "".join(c["source"]))


def run_cell(notebook: Locator, cells: list[dict], index: int) -> None:
    """Select cell ``index`` (by its prompt, as a mouse would), Shift+Enter,
    and for a code cell wait until it has run ("[n]:"), failing on an error."""
    cell = notebook.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputPrompt").click()
    notebook.page.keyboard.press("Shift+Enter")
    if cells[index]["cell_type"] != "code":
        return
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"), timeout=CELL_MS)
    error = cell.locator('[data-mime-type="application/vnd.jupyter.error"]')
    if error.count():
        pytest.fail(f"cell {index} failed:\n{error.first.inner_text()[-2000:]}", pytrace=False)


def widen_notebook(page: Page, kit: dict, share: float = 0.62) -> None:
    """Room for the panel, as a learner would make it (close the file browser,
    drag the divider right), set through JupyterLab's workspace API: a drag
    ending over the React client's frame never reaches JupyterLab."""
    workspace = json.loads((ROOT / "jupyter" / "workspace.json").read_text())
    layout = workspace["data"]["layout-restorer:data"]
    layout["main"]["dock"]["sizes"] = [share, 1 - share]
    layout["left"]["collapsed"] = True
    layout["left"].pop("current", None)
    page.goto("about:blank")  # so the page does not save its own layout over ours
    response = page.request.put(
        f"{kit['base']}/lab/api/workspaces/notifylab",
        data=json.dumps(workspace),
        headers={"Authorization": f"token {kit['token']}", "Content-Type": "application/json"},
    )
    assert response.ok, (response.status, response.text())


def react_tab(page: Page) -> FrameLocator:
    """The React client in the workspace's "notifylab" tab (jupyter-server-proxy)."""
    return page.frame_locator('.jp-MainAreaWidget iframe[src$="/notifylab/"]')


def sign_in(client: FrameLocator) -> None:
    client.get_by_label("Username").fill("ann")
    client.get_by_label("Password").fill(PASSWORD)
    client.get_by_role("button", name="Sign in").click()
    expect(client.get_by_test_id("connection")).to_have_attribute("data-status", "connected")


def expect_succeeded(client: FrameLocator, op_prefix: str) -> None:
    row = client.locator(f'[data-testid="operation"][data-id^="{op_prefix}"]')
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")


# Every width (%) a progress bar inside the element shows, in order, as rendered.
RECORD_WIDTHS = """el => {
  window.__widths = [];
  const record = () => {
    for (const bar of el.querySelectorAll('.widget-hprogress .progress-bar')) {
      const width = parseFloat(bar.style.width);
      if (!Number.isNaN(width) && window.__widths.at(-1) !== width) window.__widths.push(width);
    }
  };
  new MutationObserver(record).observe(el, {subtree: true, childList: true, attributes: true});
}"""


# --- the test ----------------------------------------------------------------------


def test_lesson_06_panel_and_react_client_side_by_side(kit, new_context):
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(kit["url"])

    # The kit's workspace: a notebook and the React client's tab, side by side.
    expect(page.locator(".jp-MainAreaWidget").first).to_be_attached()  # the page is up
    areas = page.locator("#jp-main-dock-panel > .lm-TabBar")
    expect(areas).to_have_count(2)
    expect(areas.nth(0)).to_contain_text("00-start-here.ipynb")
    expect(areas.nth(1)).to_contain_text("notifylab")
    left, right = areas.nth(0).bounding_box(), areas.nth(1).bounding_box()
    assert left and right and left["x"] + left["width"] <= right["x"], (left, right)
    expect(page.locator(".jp-Notification-Toast, .Toastify__toast")).to_have_count(0)  # no news toast

    # Open lesson 06 in that workspace: it joins the notebook's tab area.
    widen_notebook(page, kit)
    page.goto(f"{kit['base']}/lab/workspaces/notifylab/tree/{LESSON}?token={kit['token']}")
    title = page.get_by_role("heading", name=re.compile("^06"))
    notebook = page.locator(".jp-NotebookPanel").filter(has=title)
    expect(notebook).to_be_visible()
    expect(areas.nth(0)).to_contain_text(LESSON)
    expect(notebook.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=CELL_MS
    )  # its kernel is up

    cells = lesson_cells()
    panel_at = first_code_cell(cells, "= NotificationPanel(")
    start_at = first_code_cell(cells, ".start(")
    wait_at = first_code_cell(cells, "panel.progress_of(op_id)")
    assert panel_at < start_at < wait_at

    # Up to the panel: the kit's cluster joined, ann signed in, the panel shown.
    for index in range(panel_at + 1):
        run_cell(notebook, cells, index)
    panel = notebook.locator(".jp-Cell").nth(panel_at).locator(".jp-OutputArea-output .widget-vbox").first
    expect(panel).to_contain_text("Mark all read")

    # ann signs in to the React client in the tab beside the notebook.
    tab = react_tab(page)
    sign_in(tab)
    expect(tab.get_by_test_id("connection")).to_have_attribute("data-instance", "a")

    # On to the operation ann starts on instance b, and the cell that waits
    # for its end. Meanwhile the page records every width the bar shows.
    panel.evaluate(RECORD_WIDTHS)
    for index in range(panel_at + 1, wait_at + 1):
        run_cell(notebook, cells, index)

    # The panel's progress bar, in the page: it moved, step by step, to 100%.
    bar = panel.locator(".widget-hprogress .progress .progress-bar")
    expect(bar).to_have_count(1)
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"))
    expect(bar).to_have_class(re.compile(r"progress-bar-success"))
    widths = panel.evaluate("() => window.__widths")
    assert any(0 < w < 100 for w in widths) and widths[-1] == 100, widths
    assert widths == sorted(widths), widths
    title = panel.get_by_text(re.compile(r"^report [0-9a-f]{8}$"))  # the row's title: kind, id's start
    expect(title).to_have_count(1)
    op_prefix = title.text_content().split()[-1]
    expect(panel).to_contain_text("succeeded")

    # The same operation, succeeded, in the React client: in the tab, and in
    # the notebook's own frame (same cookie: the same browser session).
    expect_succeeded(tab, op_prefix)
    in_notebook = notebook.frame_locator(f'iframe[src="/proxy/{kit["ports"][0]}/"]')
    expect_succeeded(in_notebook, op_prefix)

    # The README's picture: the panel at 100% beside the React client.
    panel_cell = notebook.locator(".jp-Notebook .jp-Cell").nth(panel_at)
    panel_cell.evaluate("el => el.scrollIntoView({block: 'start'})")  # its code, then the panel
    tab.locator(f'[data-testid="operation"][data-id^="{op_prefix}"]').scroll_into_view_if_needed()
    expect(page.locator(".jp-Notification-Toast, .Toastify__toast")).to_have_count(0)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # Ctrl-C: the kit stops everything, and its ports are free again.
    process = kit["process"]
    assert process.interrupt() == 0, process.output[-4000:]
    assert wait_ports_free(kit["ports"]) == [], process.output[-4000:]
