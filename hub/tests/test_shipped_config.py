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
    ("dummy behind an HTTPS front", {"SPAWND_HUB_AUTH": "dummy", "SPAWND_HUB_PASSWORD": "a-long-password",
                                     "SPAWND_HUB_FRONT": "https://hub.example.test"}, "use SPAWND_HUB_AUTH=native"),
    ("native without an admin password", {"SPAWND_HUB_AUTH": "native"}, "would become the admin"),
    ("native with a short admin password", {"SPAWND_HUB_AUTH": "native", "SPAWND_HUB_ADMIN_PASSWORD_FILE": "SHORT"},
     "shorter than 12"),
    ("an unknown login", {"SPAWND_HUB_AUTH": "none"}, "not one of pam, native, github, dummy"),
])
def test_unsafe_set_ups_refuse_to_start(tmp_path, why, extra, want):
    if extra.get("SPAWND_HUB_ADMIN_PASSWORD_FILE") == "SHORT":
        (tmp_path / "admin-password").write_text("too-short\n")
        extra = dict(extra, SPAWND_HUB_ADMIN_PASSWORD_FILE=str(tmp_path / "admin-password"))
    p, _ = run_hub(tmp_path, **extra)
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        kill_proxy(tmp_path)  # a hub killed with -9 leaves its proxy running, holding the hub's output pipe
        out, _ = p.communicate(timeout=10)
        pytest.fail(f"{why}: the hub started instead of refusing:\n{out[-2000:]}")
    assert p.returncode != 0, f"{why}: exit 0\n{out[-2000:]}"
    assert "refusing to start" in out and want in out, out[-2000:]
    assert not (tmp_path / "jupyterhub.sqlite").exists(), "the refused hub made its database"


def kill_proxy(state):
    """End the proxy a hub started (by its PID file), if it still runs."""
    pid_file = Path(state) / "proxy.pid"
    try:
        pid = int(pid_file.read_text())
        # Only that proxy: a PID the kernel has since given to another process is left alone.
        if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, 9)
    except (OSError, ValueError):
        pass


class Browser:
    """A browser's cookie jar and forms against one hub (no redirects
    followed: each answer is looked at as it comes)."""

    def __init__(self, port, headers=None):
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.headers = headers or {}

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **kw):
                return None

        self.opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path):
        """GET path; return (status, body)."""
        req = urllib.request.Request(self.base + path, headers=self.headers)
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def post(self, path, form):
        """POST a form (with the page's _xsrf); return (status, body)."""
        page = self.get(path.split("?")[0])[1]
        xsrf = ""
        if 'name="_xsrf"' in page:
            xsrf = page.split('name="_xsrf"')[1].split('value="')[1].split('"')[0]
        data = urllib.parse.urlencode(dict(form, _xsrf=xsrf)).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def login(self, user, password):
        """True when the hub set its login cookie (JupyterHub 4 answers a
        failed login with 200, 5+ with 403)."""
        self.post("/hub/login?next=", {"username": user, "password": password})
        return self.logged_in()

    def logged_in(self):
        return any(c.name == "jupyterhub-hub-login" for c in self.jar)


def login(port, user, password, headers=None):
    """POST the login form as a browser would; True when the hub logged the user in."""
    return Browser(port, headers).login(user, password)


def wait_for_hub(p, port):
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/hub/api/", timeout=2)
            return
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                out = p.stdout.read() if p.poll() is not None else ""
                pytest.fail(f"the hub did not come up:\n{out[-3000:]}")
            time.sleep(0.3)


def stop_hub(p, state=None):
    """Stop the hub and, when state (its directory) is given, the proxy it
    started if the hub could not end it.

    Its output is read while it stops (communicate, not wait): a hub whose
    log filled the pipe nobody read blocked in a write and never exited,
    was killed after 20 s, and left its proxy running with parent 1 (seen
    after CI runs on JupyterHub 6, five proxies a run)."""
    p.terminate()
    deadline = time.monotonic() + 20
    while True:
        try:
            p.communicate(timeout=1)  # retried: no output is lost
            break
        except subprocess.TimeoutExpired:
            if p.poll() is None and time.monotonic() < deadline:
                continue
            # The hub ended and the proxy it left holds the hub's output
            # pipe open (it inherited it), so reading to the end never
            # finishes; or the hub did not end. End both, then read the
            # rest with a deadline (a CI run once waited 18 minutes here
            # on JupyterHub 6: the hub had exited, its proxy had not).
            p.kill()
            if state is not None:
                kill_proxy(state)
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.stdout.close()
                p.wait(timeout=10)
            break
    if state is not None:
        kill_proxy(state)


def test_the_laptop_set_up_refuses_wrong_passwords(tmp_path):
    p, env = run_hub(tmp_path, SPAWND_HUB_AUTH="dummy", SPAWND_HUB_PASSWORD="correct-horse-battery")
    port = int(env["SPAWND_HUB_PORT"])
    try:
        wait_for_hub(p, port)
        assert not login(port, "admin", "made-up-password"), "a made-up password logged in as admin"
        assert not login(port, "mallory", ""), "an empty password logged in"
        assert login(port, "admin", "correct-horse-battery"), "the right password was refused"
    finally:
        stop_hub(p, tmp_path)


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "198.18.0.2"},                      # what Caddy sends for a laptop on the network
    {"X-Forwarded-For": "127.0.0.1, 198.18.0.2"},          # a chain with one outside hop
    {"X-Real-Ip": "2001:db8::7"},
])
def test_the_shared_password_never_works_from_another_machine(tmp_path, headers):
    """The shared password, right as it is, is refused for a request that
    passed through a proxy from another machine: the hub config's refusal of
    a front (SPAWND_HUB_FRONT) is one guard, this is the one that holds when
    an admin puts a proxy in front and forgets to say so. The positive
    control: the same password from this machine logs in."""
    p, env = run_hub(tmp_path, SPAWND_HUB_AUTH="dummy", SPAWND_HUB_PASSWORD="correct-horse-battery")
    port = int(env["SPAWND_HUB_PORT"])
    try:
        wait_for_hub(p, port)
        assert login(port, "alice", "correct-horse-battery"), "the right password from this machine was refused"
        assert not login(port, "alice", "correct-horse-battery", headers), f"the shared password worked through {headers}"
        assert not login(port, "admin", "correct-horse-battery", headers), f"admin logged in through {headers}"
    finally:
        stop_hub(p, tmp_path)


def test_native_sign_up_waits_for_the_admin(tmp_path):
    """SPAWND_HUB_AUTH=native: a sign-up cannot log in until the admin
    authorises it; nobody can sign up under the admin's name (the account is
    made at start); the admin's approval lets the user in."""
    (tmp_path / "admin-password").write_text("admins-own-long-secret\n")
    p, env = run_hub(tmp_path, SPAWND_HUB_AUTH="native", SPAWND_HUB_ADMIN_PASSWORD_FILE=str(tmp_path / "admin-password"))
    port = int(env["SPAWND_HUB_PORT"])
    try:
        wait_for_hub(p, port)
        stranger = Browser(port)
        code, _ = stranger.post("/hub/signup", {"username": "admin", "signup_password": "strangers-password-1",
                                                "signup_password_confirmation": "strangers-password-1"})
        assert code < 500, code
        assert not login(port, "admin", "strangers-password-1"), "a stranger signed up as the admin"

        dana = Browser(port)
        code, body = dana.post("/hub/signup", {"username": "dana", "signup_password": "danas-long-password",
                                               "signup_password_confirmation": "danas-long-password"})
        assert code == 200, (code, body[-500:])
        assert not dana.login("dana", "danas-long-password"), "a sign-up logged in before the admin authorised it"

        admin = Browser(port)
        assert admin.login("admin", "admins-own-long-secret"), "the admin's password was refused"
        code, body = admin.get("/hub/authorize")
        assert code == 200 and "dana" in body, (code, body[-500:])
        code, _ = admin.get("/hub/authorize/dana")
        assert code in (200, 302), code
        assert Browser(port).login("dana", "danas-long-password"), "the authorised user was refused"
        assert not login(port, "dana", "a-wrong-password-1"), "a wrong password logged in"
    finally:
        stop_hub(p, tmp_path)


def children(pid):
    """PIDs whose parent is pid, with their command lines."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The parent is the fourth field, after the (parenthesised) name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(d.name)] = cmdline
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_idle_culler_ends_with_a_killed_hub(tmp_path):
    """A hub killed with -9 (no chance to stop its services) takes its
    managed idle-culler with it: without the launcher's PR_SET_PDEATHSIG the
    culler lived on with parent 1, and the next hub started a second."""
    p, env = run_hub(tmp_path, SPAWND_HUB_AUTH="dummy", SPAWND_HUB_PASSWORD="correct-horse-battery",
                     SPAWND_CULL_IDLE_TIMEOUT="600")
    port = int(env["SPAWND_HUB_PORT"])
    proxy = culler = None
    try:
        wait_for_hub(p, port)
        deadline = time.monotonic() + 60
        while True:
            cullers = [pid for pid, cmd in children(p.pid).items() if "jupyterhub_idle_culler" in cmd]
            if cullers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(cullers) == 1, f"want one idle-culler under the hub, have {children(p.pid)}"
        culler = cullers[0]
        time.sleep(1)
        assert alive(culler), "the idle-culler died on its own"
        proxy_pid = tmp_path / "proxy.pid"
        proxy = int(proxy_pid.read_text()) if proxy_pid.exists() else None
        p.kill()
        p.wait(20)
        deadline = time.monotonic() + 20
        while alive(culler) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(culler), f"the idle-culler ({culler}) outlived the hub killed with -9"
    finally:
        if p.poll() is None:
            stop_hub(p, tmp_path)
        if proxy and alive(proxy):  # a hub killed with -9 leaves its proxy (by design: routes survive)
            os.kill(proxy, 9)
        kill_proxy(tmp_path)
        if culler and alive(culler):  # only when the test failed
            os.kill(culler, 9)
