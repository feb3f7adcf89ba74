"""Smoke test in a real browser: JupyterLab serves a solution lab, Chromium runs all its cells.

Drives Debian's Chromium (/usr/bin/chromium) with Playwright for Python. It asserts that every
code cell ran without an error output and that the lab's ipywidgets controls rendered, and keeps
a screenshot under artifacts/browser/. Without Chromium or Playwright it is skipped on a laptop
(with how to enable it) and fails under CI (CI=true), where .ci/run installs Chromium.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.lab05

ROOT = Path(__file__).resolve().parent.parent
LAB = "05_activation_checkpointing.ipynb"  # a solution lab with an ipywidgets explorer
CHROMIUM = os.environ.get("LABS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _require_browser():
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"Chromium not found at {CHROMIUM} (Debian/Ubuntu: "
                        "`sudo apt-get install chromium`; or set LABS_CHROMIUM to its path)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright for Python is missing (`pip install -e \".[test]\"`)")
    if problems:
        message = "browser smoke test needs: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message + " — required under CI")
        pytest.skip(message)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    _require_browser()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "solutions" / LAB, work / LAB)   # the browser saves into the copy
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no virtual scrolling), so the whole notebook is in the page.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    # No "get notified about Jupyter news?" toast over the screenshot (and no outside request).
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), "labs-browser-test"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.port_retries=0",   # fail rather than move to a port we don't poll
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("JupyterLab did not start:\n"
                                         + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _accept_kernel_dialog(page, wait_s=8):
    """Where several kernelspecs are installed, JupyterLab asks which kernel to start: take its
    default (this Python's ipykernel) so "Run All" is not blocked behind the dialog."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and dialog.first.is_visible():
            dialog.locator("button.jp-mod-accept").first.click()
            return
        time.sleep(0.25)


def test_solution_lab_runs_in_chromium_with_widgets(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token, work = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(work / LAB, 4).cells)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/{LAB}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
            _accept_kernel_dialog(page)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=90_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            # Done when every code cell shows an execution number ("[12]:", not "[*]:").
            page.wait_for_function(
                """n => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                          return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
                arg=code_cells, timeout=240_000, polling=500)
            sliders = page.locator(".jupyter-widgets.widget-slider")
            assert sliders.count() > 0, "no ipywidgets slider rendered"
            sliders.first.scroll_into_view_if_needed()
            assert sliders.first.is_visible()
            assert page.locator(".jp-OutputArea-output img").count() > 0, "no figure rendered"
            page.screenshot(path=str(ARTIFACTS / "05_widgets.png"))
            # Move "segments k" one step: the kernel must redraw the explorer's figure.
            figure = sliders.nth(1).locator(
                "xpath=ancestor::div[contains(@class,'jp-OutputArea-child')]"
                "/following-sibling::div[1]//img")
            before = figure.get_attribute("src")   # the explorer's figure, under its sliders
            sliders.nth(1).locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            # The output is replaced (a new <img>): wait until the old picture is gone.
            page.wait_for_function(
                """old => ![...document.querySelectorAll('.jp-OutputArea-output img')]
                          .some(i => i.getAttribute('src') === old)""",
                arg=before, timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "05_widgets_moved.png"))
            page.keyboard.press("Control+s")
            page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')",
                                   timeout=30_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    saved = nbformat.read(work / LAB, 4)
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(saved.cells)
              if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"cells showed errors in the browser: {errors}"
    not_run = [i for i, c in enumerate(saved.cells)
               if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not not_run, f"cells {not_run} did not run"
