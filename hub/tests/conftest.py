"""Fixtures: JupyterHub's real objects (an in-memory hub database, a real
User, Hub and Server, so the Spawner base class runs its own defaults and
get_env) and a fake spawnd daemon (tornado on 127.0.0.1 or a unix socket)
with switches for the ways a daemon fails."""

import asyncio
import json
import os
import random
import socket
import tempfile
from urllib.parse import unquote

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from spawnd_spawner import SpawndSpawner

TOKEN = "0123456789abcdef0123456789abcdef"
USER = "Alice.Smith@example.org"


class FakeDaemon:
    """Just enough of spawnd's API, with switches for failure modes."""

    def __init__(self):
        self.calls = []
        self.servers = {}
        self.mode = "ok"  # ok | slow | error500 | forbidden | unsynced | exits
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_posts_until = 0  # POSTs wait until this many are in flight at once
        self.all_in = asyncio.Event()
        self.progress_503 = 0  # answer this many progress requests with 503 first
        self.progress_cut = False  # close the progress stream after two events
        self.posts_dropped = 0  # close the connection on this many POSTs, unanswered (a daemon killed mid-start)
        self.options = {
            "envs": [{"name": "team", "default": True, "port": 9999}, {"name": "gpu", "description": "CUDA", "port": 8888}],
            "profiles": [{"name": "default", "default": True, "memory_mb": 2048, "cpus": 1.5}],
            "network": {"name": "spawnd-users", "mode": "publish", "gateway": "172.18.0.1"},
        }

    def app(self):
        daemon = self

        class Base(web.RequestHandler):
            async def prepare(self):
                daemon.calls.append((self.request.method, unquote(self.request.path), self.request.body))
                if self.request.headers.get("Authorization") != "Bearer " + TOKEN:
                    return self.fail(401, "unauthorized", "missing or wrong token")
                if daemon.mode == "slow":
                    await asyncio.sleep(5)
                if daemon.mode == "error500":
                    return self.fail(500, "internal", "internal error; see the daemon's log")
                if daemon.mode == "unsynced" and not self.request.path.endswith("/progress"):
                    return self.fail(503, "unavailable", "the daemon has not synced with the container engine yet")
                if daemon.mode == "forbidden" and self.request.method == "POST":
                    return self.fail(403, "forbidden", 'env "gpu" is not available to this user\'s groups')
                if daemon.mode == "exits" and self.request.method == "POST":
                    return self.fail(502, "server_failed",
                                     "the server exited with code 1 before it listened; its last log lines:\n"
                                     "ModuleNotFoundError: No module named 'jupyter_server'")

            def fail(self, status, code, message):
                self.set_status(status)
                self.finish({"error": {"code": code, "message": message}})

        class Options(Base):
            def get(self):
                self.finish(daemon.options)

        class Server(Base):
            def key(self, user, name):
                return (unquote(user), unquote(name or ""))

            async def post(self, user, name=None):
                if daemon.posts_dropped > 0:
                    daemon.posts_dropped -= 1
                    self.request.connection.stream.close()
                    return
                daemon.in_flight += 1
                daemon.max_in_flight = max(daemon.max_in_flight, daemon.in_flight)
                try:
                    if daemon.hold_posts_until:
                        if daemon.in_flight >= daemon.hold_posts_until:
                            daemon.all_in.set()
                        await asyncio.wait_for(daemon.all_in.wait(), 20)
                    k = self.key(user, name)
                    body = json.loads(self.request.body or b"{}")
                    srv = {"user": k[0], "server": k[1], "state": "running", "ready": True, "host": "127.0.0.1",
                           "port": 40001, "env": body.get("env", "team"), "lock_digest": "sha256:abc",
                           "container_id": "c1", "request": body}
                    daemon.servers[k] = srv
                    self.finish(srv)
                finally:
                    daemon.in_flight -= 1

            def get(self, user, name=None):
                srv = daemon.servers.get(self.key(user, name))
                if srv is None:
                    return self.fail(404, "not_found", "no such server")
                self.finish(srv)

            def delete(self, user, name=None):
                srv = daemon.servers.pop(self.key(user, name), None)
                if srv is None:
                    return self.fail(404, "not_found", "no such server")
                self.finish(dict(srv, state="stopped"))

        class Progress(Base):
            async def get(self, user, name=None):
                if daemon.progress_503 > 0:
                    daemon.progress_503 -= 1
                    return self.fail(503, "unavailable", "not synced")
                self.set_header("Content-Type", "text/event-stream")
                for p, step, msg in [(0, "accepted", "Server requested"), (30, "home", "Home directory ready"),
                                     (70, "started", "Container started"), (100, "listening", "Server is listening")]:
                    ev = {"progress": p, "step": step, "message": msg}
                    if step == "listening":
                        ev["ready"] = True
                    self.write("data: " + json.dumps(ev) + "\n\n")
                    await self.flush()
                    await asyncio.sleep(0.01)
                    if daemon.progress_cut and p == 30:
                        self.request.connection.stream.close()  # the daemon goes away mid-stream
                        return

        return web.Application([
            (r"/v1/options", Options),
            (r"/v1/users/([^/]+)/server/progress", Progress),
            (r"/v1/users/([^/]+)/servers/([^/]+)/progress", Progress),
            (r"/v1/users/([^/]+)/server", Server),
            (r"/v1/users/([^/]+)/servers/([^/]+)", Server),
        ])


# One file per port a test process has handed out, with its PID: the same
# directory and rule as the Go tests' (internal/testenv/ports.go), so that
# scripts/test can run these tests beside the Go packages without the two
# drawing one port (a port free now is bound later by a process the test
# starts). A file whose process is gone is stale and taken over.
_PORTS_DIR = os.path.join(tempfile.gettempdir(), "spawnd-test-ports")


def _reserve(port):
    try:
        os.makedirs(_PORTS_DIR, mode=0o700, exist_ok=True)
    except OSError:
        return True  # no reservations possible: the bind check alone
    path = os.path.join(_PORTS_DIR, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid > 0:
                if pid == os.getpid():
                    return False
                try:
                    os.kill(pid, 0)
                    return False  # held by a live process
                except ProcessLookupError:
                    pass
                except PermissionError:
                    return False
            try:
                os.remove(path)  # stale: take it over
            except OSError:
                pass
            continue
        except OSError:
            return True
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False


def free_port():
    """A TCP port for a process the test starts later.

    It comes from 20000-29999, below the kernel's ephemeral range, which any
    outgoing connection may take a port from before the later bind (the same
    rule as the Go tests' testenv.FreePort), and is reserved across test
    processes as theirs are.
    """
    for _ in range(200):
        port = random.randrange(20000, 30000)
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            s.close()
        if _reserve(port):
            return port
    raise RuntimeError("no free TCP port in 20000-29999")


@pytest.fixture
async def daemon():
    """A fake daemon on 127.0.0.1; daemon.url is its address."""
    d = FakeDaemon()
    port = free_port()
    server = HTTPServer(d.app())
    server.listen(port, "127.0.0.1")
    d.url = f"http://127.0.0.1:{port}"
    yield d
    server.stop()


@pytest.fixture
async def unix_daemon():
    """A fake daemon on a unix socket; daemon.url is http+unix://…"""
    d = FakeDaemon()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "spawnd.sock")
    server = HTTPServer(d.app())
    server.add_socket(bind_unix_socket(path))
    d.url = "http+unix://" + path.replace("/", "%2F")
    yield d
    server.stop()
    os.unlink(path)
    os.rmdir(tmp)


class Hubworld:
    """JupyterHub's own objects: an in-memory database, the Hub, users."""

    def __init__(self, **hub_kw):
        self.db = orm.new_session_factory("sqlite:///:memory:")()
        self.hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/", **hub_kw)
        self.settings = {"hub": self.hub, "spawner_class": SpawndSpawner, "domain": "", "db": self.db,
                         "statsd": None, "allow_named_servers": True}

    def spawner(self, url, name="", groups=("physics",), user=USER, **config):
        ou = self.db.query(orm.User).filter_by(name=user).first()
        if ou is None:
            ou = orm.User(name=user)
            self.db.add(ou)
            for g in groups:
                og = self.db.query(orm.Group).filter_by(name=g).first() or orm.Group(name=g)
                self.db.add(og)
                ou.groups.append(og)
            self.db.commit()
        u = User(ou, settings=self.settings)
        if name and name not in ou.orm_spawners:
            try:
                u._new_orm_spawner(name)
            except TypeError:  # JupyterHub 6: a display name too
                u._new_orm_spawner(name, name)
        sp = u.spawners[name]
        sp.api_url = url
        sp.token = config.pop("token", TOKEN)
        for k, v in config.items():
            setattr(sp, k, v)
        if sp.orm_spawner.server is None:
            sp.orm_spawner.server = orm.Server(proto="http", ip="0.0.0.0", port=0, base_url=u.url)
            self.db.commit()
        sp.api_token = "secret-hub-token-0123456789"
        return sp


@pytest.fixture
def world():
    return Hubworld()
