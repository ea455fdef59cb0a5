"""Browser-test harness: a real JupyterLab on 127.0.0.1, driven by Playwright in headless Chromium.

Widgets only prove themselves in a browser: the Python side of a button can be perfect while the
click never reaches it. These fixtures start what a learner runs and drive it like a learner:

* ``lab_server`` (one per test session): JupyterLab on a free port of 127.0.0.1, no token, its
  root in a temporary folder, with fresh runtime, config, data, IPython, settings and workspaces
  folders (nothing of the machine's own Jupyter set-up leaks in) and the news pop-up turned off
  (it can cover widgets). The kernels see ``RLHF_KIT_HOME`` if it is set, else a temporary one.
* ``chromium`` (one per session): Debian's ``/usr/bin/chromium`` (or ``$RLHF_KIT_CHROMIUM``)
  launched by Playwright, headless, with the flags of shared/NOTEBOOK-TESTING.md.
* ``lab`` (one per test): a ``Lab`` with a folder of its own under the server's root and helpers
  to write a notebook, open it in a fresh browser context, run all its cells and wait for the
  kernel; the test's kernels are shut down afterwards.

Browser tests run by default, in CI too: a missing Chromium fails them with the command that
installs it. A developer may skip them by setting ``RLHF_KIT_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = os.environ.get("RLHF_KIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KERNEL_IDLE = "Python 3 (ipykernel) | Idle"  # the status bar once the kernel is connected and idle
TIMEOUT_MS = 120_000  # generous: two shared CPU cores can be slow to load JupyterLab


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RLHF_KIT_SKIP_BROWSER") == "1":
        skip = pytest.mark.skip(reason="RLHF_KIT_SKIP_BROWSER=1 is set")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server process and the folders it uses."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"  # what the file browser shows; notebooks go here
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "jupyterlab.log"
        folders = {name: base / name for name in ("runtime", "config", "data", "ipython",
                                                  "settings", "workspaces", "home")}
        for folder in (self.root, *folders.values()):
            folder.mkdir(parents=True, exist_ok=True)
        news_off = folders["settings"] / "@jupyterlab" / "apputils-extension"
        news_off.mkdir(parents=True)
        (news_off / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.env = {**os.environ,
                    "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
                    "JUPYTER_CONFIG_DIR": str(folders["config"]),
                    "JUPYTER_DATA_DIR": str(folders["data"]),
                    "IPYTHONDIR": str(folders["ipython"]),
                    "JUPYTERLAB_SETTINGS_DIR": str(folders["settings"]),
                    "JUPYTERLAB_WORKSPACES_DIR": str(folders["workspaces"]),
                    "RLHF_KIT_HOME": os.environ.get("RLHF_KIT_HOME") or str(folders["home"]),
                    "PYTHONUNBUFFERED": "1"}
        self.command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={folders['settings']}",
            f"--LabApp.workspaces_dir={folders['workspaces']}",
        ]
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> None:
        with open(self.log, "wb") as log:
            # A session of its own, so that stopping it also stops the kernels it started.
            self.process = subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server's own process group
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


class Lab:
    """One test's view of the server: its own folder, and helpers to drive notebooks."""

    def __init__(self, server: LabServer, browser, name: str):
        self.server = server
        self.browser = browser
        self.folder = server.root / name  # notebooks and stores of this test
        self.folder.mkdir(parents=True)
        self.contexts: list = []

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        """Write a notebook of code cells (Python 3 kernel) into this test's folder."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                           "language": "python"}
        path = self.folder / name
        nbformat.write(notebook, path)
        return path

    def open(self, path: Path):
        """Open a notebook in a fresh browser context; returns the page once the kernel is idle."""
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        relative = path.relative_to(self.server.root).as_posix()
        page.goto(f"{self.server.url}/lab/tree/{relative}?reset")  # ?reset: no saved layout
        self.wait_idle(page)
        return page

    @staticmethod
    def wait_idle(page) -> None:
        """Wait until the status bar says the kernel is connected and idle.

        (The kernel-status element exists before the kernel is connected: waiting on it is flaky.)
        """
        from playwright.sync_api import expect

        expect(page.get_by_text(KERNEL_IDLE)).to_be_visible(timeout=TIMEOUT_MS)

    def run_all(self, page) -> None:
        """Run every cell (Run menu, Run All Cells); return when no cell is left running ("[*]")
        and the kernel is idle again."""
        from playwright.sync_api import expect

        page.locator(".jp-Notebook").first.click()  # focus the notebook, not the file browser
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.wait_for_timeout(300)  # let the cells be queued before waiting for them
        expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=TIMEOUT_MS)
        self.wait_idle(page)

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.server.shutdown_kernels()


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium under Playwright (a clear failure when it is missing)."""
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: install it with "
                    "'apt-get install -y chromium' (Debian), point RLHF_KIT_CHROMIUM at it, or set "
                    "RLHF_KIT_SKIP_BROWSER=1 to skip the browser tests.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def lab(chromium, lab_server, request):  # chromium first: a missing browser fails at once
    lab = Lab(lab_server, chromium, request.node.name.replace("[", "-").replace("]", ""))
    yield lab
    lab.close()
