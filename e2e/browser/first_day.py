"""A team member's first day, in a real browser: Debian's Chromium, headless,
driven by Playwright (from PyPI; Playwright's own browser downloads are never
used). Run by e2e.TestBrowserFirstDay, which starts spawnd and JupyterHub.

    python first_day.py --url http://127.0.0.1:8000 --user alice \
        --password ... --pandas 3.1.0 --shots DIR

It logs in, watches the spawn page's progress, lands in JupyterLab (exactly
the team kernel in the launcher and the server's kernel list, no news prompt
or update check), opens a notebook on the "Team (Python 3)" kernel, prints
pandas' version, opens a notebook recorded with "python3" (which the env
does not offer) and sees it on the team kernel, and stops the server from
the hub's control panel. Each step writes a screenshot to
DIR. Exit status 0 means every step did what a person would expect; anything
else prints what went wrong.
"""

import argparse
import json
import re
import sys
import time

from playwright.sync_api import expect, sync_playwright

# The progress messages the spawn page receives, kept across the redirect
# into JupyterLab (same origin) so the test can read them afterwards.
RECORD_PROGRESS = """
(() => {
  const Orig = window.EventSource;
  if (!Orig || Orig.__spawnd) return;
  function Recording(url, opts) {
    const es = new Orig(url, opts);
    es.addEventListener("message", (e) => {
      try {
        const seen = JSON.parse(sessionStorage.getItem("spawnd-progress") || "[]");
        seen.push(JSON.parse(e.data).message || "");
        sessionStorage.setItem("spawnd-progress", JSON.stringify(seen));
      } catch (err) {}
    });
    return es;
  }
  Recording.prototype = Orig.prototype;
  Recording.__spawnd = true;
  window.EventSource = Recording;
})();
"""


def step(msg):
    print(f"browser: {msg}", flush=True)


API_GET = """
async (url) => {
  const m = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/);
  const r = await fetch(url, {headers: {"X-XSRFToken": m ? decodeURIComponent(m[1]) : ""}});
  return [r.status, await r.text()];
}
"""


def api_get(page, url):
    """GET a server API as the page does (its cookies, its XSRF token)."""
    status, body = page.evaluate(API_GET, url)
    return status, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--pandas", required=True, help="the pandas version the lock pins")
    ap.add_argument("--shots", required=True)
    ap.add_argument("--recorded", required=True,
                    help="a notebook in the home recorded with a kernel the env does not have (python3)")
    ap.add_argument("--chromium", default="/usr/lib/chromium/chromium")
    a = ap.parse_args()
    base = a.url.rstrip("/")
    shot = 0

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        # Assertions wait as long as actions (Playwright's default is 5 s,
        # too short for JupyterLab on a loaded machine: CI saw it).
        expect.set_options(timeout=60_000)
        page.add_init_script(RECORD_PROGRESS)

        def snap(name):
            nonlocal shot
            shot += 1
            path = f"{a.shots}/{shot:02d}-{name}.png"
            page.screenshot(path=path, full_page=True)
            step(f"screenshot {path}")

        try:
            step("log in")
            page.goto(base + "/hub/login")
            page.fill("#username_input", a.user)
            page.fill("#password_input", a.password + "-wrong")
            page.click("#login_submit")
            expect(page.locator(".login_error, #login_error, .alert-danger").first).to_be_visible()
            assert "/hub/login" in page.url, f"a wrong password went on to {page.url}"
            snap("wrong-password")
            page.fill("#username_input", a.user)
            page.fill("#password_input", a.password)
            page.click("#login_submit")

            step("the spawn page")
            page.wait_for_url(re.compile(r"/hub/spawn-pending/|/user/[^/]+/lab"), timeout=120_000)
            if "/spawn-pending/" in page.url:
                expect(page.locator("#progress-message, .progress-bar").first).to_be_visible()
                snap("spawn-progress")
            page.wait_for_url(re.compile(r"/user/[^/]+/lab"), timeout=180_000)
            seen = json.loads(page.evaluate("sessionStorage.getItem('spawnd-progress') || '[]'"))
            step(f"progress seen on the spawn page: {seen}")
            if not any("Server ready" in m or "ready" in m.lower() for m in seen):
                sys.exit(f"browser: the spawn page showed no progress up to 'ready': {seen}")

            step("JupyterLab")
            card = page.locator('.jp-LauncherCard[data-category="Notebook"][title="Team (Python 3)"]')
            expect(card).to_be_visible(timeout=120_000)
            snap("jupyterlab")
            # Exactly the team kernel: no "Python 3 (ipykernel)" beside it.
            cards = page.locator('.jp-LauncherCard[data-category="Notebook"]')
            expect(cards).to_have_count(1)
            prefix = "/user/" + a.user
            status, body = api_get(page, base + prefix + "/api/kernelspecs")
            specs = json.loads(body) if status == 200 else {}
            step(f"kernelspecs: {sorted(specs.get('kernelspecs', {}))}, default {specs.get('default')!r}")
            if sorted(specs.get("kernelspecs", {})) != ["team"] or specs.get("default") != "team":
                sys.exit(f"browser: the server lists kernels {status} {body[:300]}; want exactly the team kernel")
            # No news prompt and no update check: the image's overrides are
            # the defaults JupyterLab applies to the notification settings.
            status, body = api_get(page, base + prefix + "/lab/api/settings/@jupyterlab/apputils-extension:notification")
            props = json.loads(body).get("schema", {}).get("properties", {}) if status == 200 else {}
            news = props.get("fetchNews", {}).get("default")
            updates = props.get("checkForUpdates", {}).get("default")
            step(f"notification settings: fetchNews {news!r}, checkForUpdates {updates!r}")
            if news != "false" or updates is not False:
                sys.exit(f"browser: JupyterLab would ask about news or check for updates: {status} {body[:400]}")
            card.click()
            panel = page.locator(".jp-NotebookPanel").last
            expect(panel).to_be_visible()
            # The kernel and its state as the status bar shows them
            # ("Team (Python 3) | Idle"). Not the notebook's toolbar: on a
            # loaded machine JupyterLab 4 has left it unpopulated for over a
            # minute (CI run 10) while the kernel was up and idle.
            expect(page.get_by_text(re.compile(r"^Team \(Python 3\) \| Idle$"))).to_be_visible(timeout=120_000)

            step("run pandas on the team kernel")
            editor = panel.locator(".jp-Cell .cm-content").first
            editor.click()
            page.keyboard.type("import pandas; print(pandas.__version__)")
            page.keyboard.press("Shift+Enter")
            out = panel.locator(".jp-OutputArea-output").first
            expect(out).to_contain_text(a.pandas, timeout=120_000)
            text = out.inner_text().strip()
            step(f"the cell printed {text!r}; the lock pins pandas {a.pandas}")
            if text != a.pandas:
                sys.exit(f"browser: pandas {text!r} on the team kernel, the lock pins {a.pandas}")
            page.keyboard.press("Control+s")  # saved to the home, as a person would
            # JupyterLab 4 may ask for a name on an untitled notebook's first
            # save: wait for that dialog or for the save itself, whichever
            # comes (a fixed few seconds for the dialog was too short on a
            # loaded machine and would miss it).
            dialog = page.locator(".jp-Dialog")
            dirty = page.locator(".lm-TabBar-tab.jp-mod-dirty")
            deadline = time.monotonic() + 120
            while not dialog.is_visible() and dirty.count() > 0:
                if time.monotonic() > deadline:
                    sys.exit("browser: the notebook neither saved nor asked for a name within 120 s of Ctrl+S")
                page.wait_for_timeout(200)
            if dialog.is_visible():
                dialog.get_by_role("textbox").fill("first-day.ipynb")
                dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
            expect(dirty).to_have_count(0, timeout=120_000)
            snap("notebook")
            # By now JupyterLab would have asked (it asks once it is up).
            expect(page.get_by_text(re.compile("Jupyter news", re.I))).to_have_count(0)

            step("a notebook recorded with python3 opens on the team kernel")
            page.goto(base + prefix + "/lab/tree/" + a.recorded)
            # The session JupyterLab starts for that notebook (not the status
            # bar: the restored first notebook shows the team kernel too).
            deadline = time.monotonic() + 120
            kernel = None
            while kernel is None:
                status, body = api_get(page, base + prefix + "/api/sessions")
                for sess in json.loads(body) if status == 200 else []:
                    if sess.get("path", "").endswith(a.recorded):
                        kernel = (sess.get("kernel") or {}).get("name")
                if kernel is None:
                    if page.locator(".jp-Dialog").count() > 0:
                        snap("kernel-dialog")
                        sys.exit("browser: opening a notebook recorded with python3 asked for a kernel")
                    if time.monotonic() > deadline:
                        snap("recorded-notebook")
                        sys.exit(f"browser: no kernel started for {a.recorded} within 120 s")
                    page.wait_for_timeout(500)
            step(f"{a.recorded} runs on kernel {kernel!r}")
            if kernel != "team":
                sys.exit(f"browser: {a.recorded} (recorded with python3) opened on {kernel!r}, not the team kernel")
            snap("recorded-notebook")

            step("stop the server from the hub's control panel")
            page.goto(base + "/hub/home")
            stop = page.locator("#stop")
            expect(stop).to_be_visible()
            snap("control-panel")
            stop.click()
            expect(page.locator("#start")).to_be_visible(timeout=120_000)
            expect(stop).to_be_hidden()
            snap("stopped")
        except BaseException:
            snap("failure")  # what the browser showed when the step failed
            raise
        browser.close()
    step("done")


if __name__ == "__main__":
    main()
