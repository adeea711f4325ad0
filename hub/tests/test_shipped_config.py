"""The shipped deploy/jupyterhub_config.py, run by a real JupyterHub: no
setting lets a stranger log in. A refused set-up exits before the hub
listens, with a message that names the fix; the laptop set-up (a shared
password on loopback) refuses wrong passwords."""

import http.cookiejar
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "jupyterhub_config.py"


def hub_env(tmp_path, **extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("SPAWND_", "GITHUB_")):
            del env[k]
    env.update({
        "SPAWND_HUB_STATE": str(tmp_path),
        "SPAWND_HUB_IP": "127.0.0.1",
        "SPAWND_HUB_PORT": str(free_port()),
        "SPAWND_HUB_API_PORT": str(free_port()),
        "SPAWND_PROXY_API_PORT": str(free_port()),
        "SPAWND_TOKEN_FILE": str(tmp_path / "no-token"),
        "NODE_PATH": "/usr/share/nodejs",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra)
    return env


def run_hub(tmp_path, **extra):
    """Start the hub; return (process, env)."""
    env = hub_env(tmp_path, **extra)
    p = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p, env


@pytest.mark.parametrize("why,extra,want", [
    ("dummy without a password", {"SPAWND_HUB_AUTH": "dummy"}, "Fix: set SPAWND_HUB_PASSWORD"),
    ("dummy with a short password", {"SPAWND_HUB_AUTH": "dummy", "SPAWND_HUB_PASSWORD": "abc"}, "shorter than 8"),
    ("dummy on every address", {"SPAWND_HUB_AUTH": "dummy", "SPAWND_HUB_PASSWORD": "a-long-password", "SPAWND_HUB_BIND": "0.0.0.0"},
     "reachable from other machines"),
    ("github without allowed users", {"SPAWND_HUB_AUTH": "github", "GITHUB_CLIENT_ID_FILE": "/dev/null",
                                      "GITHUB_CLIENT_SECRET_FILE": "/dev/null"}, "every GitHub user"),
    ("github without its secret", {"SPAWND_HUB_AUTH": "github"}, "GITHUB_CLIENT_ID_FILE"),
    ("an unknown login", {"SPAWND_HUB_AUTH": "none"}, "not one of pam, github, dummy"),
])
def test_unsafe_set_ups_refuse_to_start(tmp_path, why, extra, want):
    p, _ = run_hub(tmp_path, **extra)
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"{why}: the hub started instead of refusing:\n{out[-2000:]}")
    assert p.returncode != 0, f"{why}: exit 0\n{out[-2000:]}"
    assert "refusing to start" in out and want in out, out[-2000:]
    assert not (tmp_path / "jupyterhub.sqlite").exists(), "the refused hub made its database"


def login(port, user, password):
    """POST the login form as a browser would; True when the hub set its
    login cookie (JupyterHub 4 answers a failed login with 200, 5+ with 403)."""
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/hub/login", timeout=10).read().decode()
    xsrf = ""
    if 'name="_xsrf"' in page:
        xsrf = page.split('name="_xsrf"')[1].split('value="')[1].split('"')[0]
    data = urllib.parse.urlencode({"username": user, "password": password, "_xsrf": xsrf}).encode()
    try:
        opener.open(base + "/hub/login?next=", data=data, timeout=10)
    except urllib.error.HTTPError:
        pass
    return any(c.name == "jupyterhub-hub-login" for c in jar)


def test_the_laptop_set_up_refuses_wrong_passwords(tmp_path):
    p, env = run_hub(tmp_path, SPAWND_HUB_AUTH="dummy", SPAWND_HUB_PASSWORD="correct-horse-battery")
    port = int(env["SPAWND_HUB_PORT"])
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/hub/api/", timeout=2)
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    out = p.stdout.read() if p.poll() is not None else ""
                    pytest.fail(f"the hub did not come up:\n{out[-3000:]}")
                time.sleep(0.3)
        assert not login(port, "admin", "made-up-password"), "a made-up password logged in as admin"
        assert not login(port, "mallory", ""), "an empty password logged in"
        assert login(port, "admin", "correct-horse-battery"), "the right password was refused"
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
