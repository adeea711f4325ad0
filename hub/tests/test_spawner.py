"""Unit tests of SpawndSpawner against a fake spawnd daemon (tornado, on 127.0.0.1)."""

import asyncio
import json
import socket
import time
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from spawnd_spawner import SpawndError, SpawndSpawner

TOKEN = "0123456789abcdef0123456789abcdef"


class FakeDaemon:
    """Just enough of spawnd's API, with switches for failure modes."""

    def __init__(self):
        self.calls = []
        self.servers = {}
        self.mode = "ok"  # ok | slow | error500 | error400
        self.options = {
            "envs": [{"name": "team", "default": True}, {"name": "gpu", "description": "CUDA"}],
            "profiles": [{"name": "default", "default": True, "memory_mb": 2048, "cpus": 1}],
            "network": {"name": "spawnd-users", "mode": "publish", "gateway": "172.18.0.1"},
        }

    def app(self):
        daemon = self

        class Base(web.RequestHandler):
            async def prepare(self):
                daemon.calls.append((self.request.method, unquote(self.request.path), self.request.body))
                if self.request.headers.get("Authorization") != "Bearer " + TOKEN:
                    self.set_status(401)
                    self.finish({"error": {"code": "unauthorized", "message": "missing or wrong token"}})
                    return
                if daemon.mode == "slow":
                    await asyncio.sleep(5)
                if daemon.mode == "error500":
                    self.set_status(500)
                    self.finish({"error": {"code": "internal", "message": "internal error; see the daemon's log"}})
                elif daemon.mode == "error400" and self.request.method == "POST":
                    self.set_status(403)
                    self.finish({"error": {"code": "forbidden", "message": 'env "gpu" is not available to this user\'s groups'}})

        class Options(Base):
            def get(self):
                self.finish(daemon.options)

        class Server(Base):
            def key(self, user, name):
                return (unquote(user), unquote(name or ""))

            def post(self, user, name=None):
                k = self.key(user, name)
                body = json.loads(self.request.body or b"{}")
                srv = {"user": k[0], "server": k[1], "state": "running", "host": "127.0.0.1", "port": 40001,
                       "env": body.get("env", "team"), "lock_digest": "sha256:abc", "container_id": "c1", "request": body}
                daemon.servers[k] = srv
                self.finish(srv)

            def get(self, user, name=None):
                srv = daemon.servers.get(self.key(user, name))
                if srv is None:
                    self.set_status(404)
                    self.finish({"error": {"code": "not_found", "message": "no such server"}})
                    return
                self.finish(srv)

            def delete(self, user, name=None):
                srv = daemon.servers.pop(self.key(user, name), None)
                if srv is None:
                    self.set_status(404)
                    self.finish({"error": {"code": "not_found", "message": "no such server"}})
                    return
                self.finish(dict(srv, state="stopped"))

        class Progress(Base):
            async def get(self, user, name=None):
                self.set_header("Content-Type", "text/event-stream")
                for p, step, msg in [(0, "accepted", "Server requested"), (30, "home", "Home directory ready"),
                                     (70, "started", "Container started"), (100, "listening", "Server is listening")]:
                    ev = {"progress": p, "step": step, "message": msg}
                    if step == "listening":
                        ev["ready"] = True
                    self.write("data: " + json.dumps(ev) + "\n\n")
                    await self.flush()
                    await asyncio.sleep(0.01)

        return web.Application([
            (r"/v1/options", Options),
            (r"/v1/users/([^/]+)/server/progress", Progress),
            (r"/v1/users/([^/]+)/servers/([^/]+)/progress", Progress),
            (r"/v1/users/([^/]+)/server", Server),
            (r"/v1/users/([^/]+)/servers/([^/]+)", Server),
        ])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_spawner(url, name="", groups=("physics",), **kw):
    user = SimpleNamespace(
        name="Alice.Smith@example.org", escaped_name="Alice.Smith@example.org",
        groups=[SimpleNamespace(name=g) for g in groups], url="/user/alice/",
    )
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/")
    orm = SimpleNamespace(name=name, server=None, state=None)
    sp = SpawndSpawner(user=user, hub=hub, orm_spawner=orm, api_url=url, token=kw.pop("token", TOKEN), **kw)
    sp.get_env = lambda: {"JUPYTERHUB_API_TOKEN": "secret-hub-token", "JUPYTERHUB_USER": user.name}
    return sp


def run(coro_fn):
    """Run coro_fn(daemon, url) with a fake daemon in the same event loop."""
    async def main():
        daemon = FakeDaemon()
        port = free_port()
        server = HTTPServer(daemon.app())
        server.listen(port, "127.0.0.1")
        try:
            return await coro_fn(daemon, f"http://127.0.0.1:{port}")
        finally:
            server.stop()
    return asyncio.run(main())


def test_start_poll_stop_and_state():
    async def t(daemon, url):
        sp = make_spawner(url)
        sp.user_options = {"env": "gpu"}
        got = await sp.start()
        assert got == "http://127.0.0.1:40001"
        method, path, body = [c for c in daemon.calls if c[0] == "POST"][0]
        assert path == "/v1/users/Alice.Smith@example.org/server"
        req = json.loads(body)
        assert req["env"] == "gpu" and req["groups"] == ["physics"]
        assert req["environment"]["JUPYTERHUB_API_TOKEN"] == "secret-hub-token"
        assert set(req) <= {"env", "profile", "environment", "cmd", "groups"}
        assert sp.hub_connect_url == "http://172.18.0.1:8081"
        assert await sp.poll() is None
        state = sp.get_state()
        assert state["container_id"] == "c1" and state["lock_digest"] == "sha256:abc"
        sp2 = make_spawner(url)
        sp2.load_state(state)
        assert sp2.container_id == "c1"
        await sp.stop()
        assert await sp.poll() == 0
        assert sp.get_state().get("container_id") is None
        await sp.stop()  # stopping a stopped server is fine
    run(t)


def test_named_server_path_is_escaped():
    async def t(daemon, url):
        sp = make_spawner(url, name="my lab/1")
        await sp.start()
        assert list(daemon.servers) == [("Alice.Smith@example.org", "my lab/1")]
    run(t)


def test_progress_events_in_order():
    async def t(daemon, url):
        sp = make_spawner(url)
        events = [ev async for ev in sp.progress()]
        assert [e["progress"] for e in events] == [0, 30, 70, 100]
        assert events[-1]["message"] == "Server is listening"
        assert all(set(e) == {"progress", "message"} for e in events)
    run(t)


def test_options_form_offers_names_only():
    async def t(daemon, url):
        sp = make_spawner(url)
        form = await sp.get_options_form()
        assert 'name="env"' in form and 'value="gpu"' in form and "CUDA" in form
        assert 'name="profile"' not in form  # one profile: nothing to choose
        assert [c[1] for c in daemon.calls] == ["/v1/options"]
        assert sp.options_from_form({"env": ["gpu"], "image": ["evil"], "profile": [""]}) == {"env": "gpu"}
        daemon.options["envs"] = daemon.options["envs"][:1]
        assert await sp.get_options_form() == ""
    run(t)


def test_refusal_is_a_readable_message():
    async def t(daemon, url):
        daemon.mode = "error400"
        sp = make_spawner(url)
        with pytest.raises(SpawndError) as e:
            await sp.start()
        assert "not available to this user's groups" in str(e.value)
        assert e.value.status == 403
    run(t)


def test_wrong_token_says_so():
    async def t(daemon, url):
        sp = make_spawner(url, token="wrong-token-wrong-token")
        with pytest.raises(SpawndError) as e:
            await sp.start()
        assert "token was refused" in str(e.value)
    run(t)


def test_daemon_down():
    async def t(daemon, url):
        down = f"http://127.0.0.1:{free_port()}"
        sp = make_spawner(down, stop_retries=2)
        with pytest.raises(SpawndError) as e:
            await sp.start()
        assert "not reachable" in str(e.value)
        # Unknown is not stopped: poll keeps the server, stop reports failure.
        assert await sp.poll() is None
        with pytest.raises(SpawndError):
            await sp.stop()
    run(t)


def test_slow_daemon_times_out():
    async def t(daemon, url):
        daemon.mode = "slow"
        sp = make_spawner(url, request_timeout=0.5)
        began = time.monotonic()
        assert await sp.poll() is None
        assert time.monotonic() - began < 3
    run(t)


def test_server_error_is_reported():
    async def t(daemon, url):
        daemon.mode = "error500"
        sp = make_spawner(url, stop_retries=1)
        with pytest.raises(SpawndError) as e:
            await sp.start()
        assert "internal error" in str(e.value)
    run(t)
