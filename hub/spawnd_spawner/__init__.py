"""JupyterHub spawner that runs each user's server through the spawnd daemon.

The spawner is a thin shim over spawnd's HTTP API (api/openapi.yaml):

- start   -> POST   /v1/users/{user}/server[s/{name}]  (answers when the server listens)
- poll    -> GET    the same path (answered from the daemon's memory)
- stop    -> DELETE the same path (the home is never touched)
- progress-> GET    .../progress (Server-Sent Events, JupyterHub's shape)

Users choose among the env and profile *names* the daemon offers for their
groups; the daemon enforces what each group may use. Nothing a user sends can
name an image, a mount or a Docker option.

The spawner talks to the daemon through HTTP clients of its own, never the
hub's shared tornado client (which allows 10 requests at once and also
carries the hub's proxy calls): see ``max_connections``.
"""

import asyncio
import html
import ipaddress
import json
import os
import socket
from urllib.parse import quote, unquote, urlencode, urlparse

from jupyterhub.spawner import Spawner
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop
from tornado.netutil import Resolver
from traitlets import Bool, Float, Integer, Unicode, default

try:  # JupyterHub >= 6: spawn failures with a reason and an HTTP status
    from jupyterhub.spawner import SpawnException as _SpawnException
except ImportError:  # JupyterHub 3, 4, 5
    _SpawnException = None

from ._version import __version__

__all__ = ["SpawndSpawner", "SpawndError", "__version__"]


def _segment(name):
    """Percent-encode a name as one path segment, dots included, so that
    names like '..' or 'a/b' stay names."""
    return quote(name, safe="").replace(".", "%2E")


class SpawndError(Exception):
    """The daemon refused a request or could not be reached.

    The message is written for the person on the spawn page. ``code`` is the
    daemon's error code (``invalid``, ``forbidden``, ``unavailable``,
    ``server_failed``, ...), ``status`` its HTTP status (None when the daemon
    did not answer at all).
    """

    def __init__(self, message, code="unavailable", status=None):
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def unknown(self):
        """True when the answer says nothing about the server: the daemon
        is unreachable, timed out, or has not synced with its engine yet."""
        return self.status is None or self.status == 503


# The daemon's refusals that are the user's or the policy's, with the reason
# label JupyterHub 6 puts in its spawn-failure metrics.
_REASONS = {
    "invalid": "invalid",
    "forbidden": "forbidden",
    "conflict": "conflict",
    "unavailable": "capacity",
    "server_failed": "server_failed",
}


def _spawn_error(err):
    """The exception start() raises for a daemon error: JupyterHub 6's
    SpawnException (reason and status code on the spawn page and in metrics)
    where it exists, the SpawndError itself otherwise."""
    if _SpawnException is None or err.code not in _REASONS:
        return err
    status = err.status if err.status and err.status >= 400 else 500
    return _SpawnException(str(err), reason=_REASONS[err.code], status_code=status)


class _UnixResolver(Resolver):
    """Resolve every host to one unix socket (for http+unix:// daemon URLs)."""

    def initialize(self, path):
        self.path = path

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_UNIX, self.path)]

    def close(self):
        pass


def _parse_api_url(url):
    """Split api_url into (base URL for requests, unix socket path or None).

    http+unix://%2Frun%2Fspawnd%2Fapi.sock (the path percent-encoded as the
    host, as requests-unixsocket spells it) and http+unix:///run/spawnd/api.sock
    both name a unix socket."""
    u = urlparse(url)
    if u.scheme != "http+unix":
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"api_url {url!r} must be http://HOST:PORT, https://HOST:PORT or http+unix://SOCKET")
        return url.rstrip("/"), None
    path = unquote(u.netloc) if u.netloc else u.path
    if not path.startswith("/"):
        raise ValueError(f"api_url {url!r}: the unix socket path must be absolute")
    return "http://spawnd", path


class SpawndSpawner(Spawner):
    """Spawn single-user servers as containers through spawnd."""

    api_url = Unicode(
        "http://127.0.0.1:8765",
        config=True,
        help="""URL of the spawnd daemon's API: http://HOST:PORT, https://HOST:PORT,
        or http+unix://%2Frun%2Fspawnd%2Fapi.sock for a unix socket.""",
    )
    # Spawner.api_token is the hub's token for the single-user server; the
    # daemon's token has its own names.
    token = Unicode(
        config=True,
        help="Bearer token for spawnd's API. Default: $SPAWND_TOKEN, else the content of token_file.",
    )
    token_file = Unicode(
        "",
        config=True,
        help="File holding spawnd's API token (e.g. /etc/spawnd/token).",
    )
    default_env = Unicode(
        "", config=True, help="Env name to use when the user chooses none ('' = the daemon's default)."
    )
    default_profile = Unicode(
        "", config=True, help="Resource profile to use when the user chooses none ('' = the daemon's default)."
    )
    tls_verify = Bool(True, config=True, help="Verify the daemon's TLS certificate.")
    ca_file = Unicode("", config=True, help="CA bundle to verify the daemon's certificate with.")
    request_timeout = Float(
        30.0, config=True, help="Seconds to wait for an answer to a status or stop call."
    )
    connect_timeout = Float(5.0, config=True, help="Seconds to wait for a connection to the daemon.")
    stop_retries = Integer(
        3,
        config=True,
        help="How many times a stop is tried while the daemon is unreachable before it is reported as failed.",
    )
    stop_retry_for = Float(
        3600.0,
        config=True,
        help="""After a stop that failed because the daemon was unreachable, keep asking the daemon to stop
        the server in the background for this many seconds (JupyterHub counts the server as stopped anyway,
        so its container would otherwise run on unseen). A new start of the same server cancels it. 0 turns it off.""",
    )
    max_connections = Integer(
        1024,
        config=True,
        help="""How many requests to the daemon may be in flight at once, per hub process,
        for each of the spawner's two clients (one for calls, one for progress streams).
        Each pending spawn holds at most one of each, so this must be at least
        JupyterHub's concurrent_spawn_limit (default 100); beyond it requests queue.
        The hub's own shared HTTP client (and its proxy calls) is never used.""",
    )
    use_gateway = Bool(
        True,
        config=True,
        help="""When no hub connect address is configured (JupyterHub.hub_connect_url,
        JupyterHub.hub_connect_ip or Spawner.hub_connect_url) and the daemon publishes
        ports on the host (network mode 'publish'), point user servers at the hub API
        through the user network's gateway, so containers reach a hub that runs on the
        host. The hub must then listen there (c.JupyterHub.hub_ip = '0.0.0.0' or the
        gateway). A configured connect address is always used as it is.""",
    )

    @default("token")
    def _default_token(self):
        tok = os.environ.get("SPAWND_TOKEN", "")
        if not tok and self.token_file:
            try:
                with open(self.token_file) as f:
                    tok = f.read().strip()
            except OSError as e:
                self.log.error("Cannot read spawnd token file %s: %s", self.token_file, e)
        return tok

    # The env's own command runs unless the admin sets one: the image knows
    # how to start its single-user server.
    @default("cmd")
    def _default_cmd(self):
        return None

    # The single-user server listens on every address of its container, on
    # the env's port (the daemon says which); spawnd publishes or routes it.
    @default("ip")
    def _default_ip(self):
        return "0.0.0.0"

    @default("port")
    def _default_port(self):
        return 8888

    @default("options_form")
    def _default_options_form(self):
        return _render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return _names_from_form

    # State JupyterHub keeps for us across hub restarts.
    container_id = Unicode("")
    env_name = Unicode("")
    lock_digest = Unicode("")

    def get_state(self):
        state = super().get_state()
        if self.container_id:
            state["container_id"] = self.container_id
            state["env"] = self.env_name
            state["lock_digest"] = self.lock_digest
        return state

    def load_state(self, state):
        super().load_state(state)
        self.container_id = state.get("container_id", "")
        self.env_name = state.get("env", "")
        self.lock_digest = state.get("lock_digest", "")

    def clear_state(self):
        super().clear_state()
        self.container_id = ""
        self.env_name = ""
        self.lock_digest = ""

    # --- talking to the daemon -------------------------------------------

    # Clients are shared by every spawner of the hub process, one pair per
    # event loop and daemon address.
    _clients = {}

    def _client(self, kind):
        """The spawner's own HTTP client: kind 'calls' for short requests,
        'streams' for progress streams, so that open streams never hold up a
        start, a poll or a stop."""
        base, sock = _parse_api_url(self.api_url)
        key = (id(IOLoop.current()), kind, sock, self.max_connections)
        c = SpawndSpawner._clients.get(key)
        if c is None:
            kw = {"max_clients": self.max_connections}
            if sock:
                kw["resolver"] = _UnixResolver(path=sock)
            c = AsyncHTTPClient(force_instance=True, **kw)
            SpawndSpawner._clients[key] = c
        return base, c

    def _server_path(self, name=None):
        path = "/v1/users/" + _segment(self.user.name)
        name = self.name if name is None else name
        if name:
            return path + "/servers/" + _segment(name)
        return path + "/server"

    def _groups(self):
        return sorted(g.name for g in (getattr(self.user, "groups", None) or []))

    def _request_args(self, timeout):
        return dict(
            headers={
                "Authorization": "Bearer " + self.token,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            connect_timeout=self.connect_timeout,
            request_timeout=timeout,
            validate_cert=self.tls_verify,
            ca_certs=self.ca_file or None,
        )

    async def _request(self, method, path, body=None, timeout=None, allow_404=False):
        base, client = self._client("calls")
        data = None
        if body is not None:
            data = json.dumps(body)
        elif method in ("POST", "PUT"):
            data = ""
        req = HTTPRequest(base + path, method=method, body=data, **self._request_args(timeout or self.request_timeout))
        try:
            resp = await client.fetch(req, raise_error=False)
        except Exception as e:  # connection refused, DNS, TLS
            raise SpawndError(f"The spawnd daemon is not reachable at {self.api_url} ({e}).")
        if resp.code == 599:
            err = resp.error or "timeout"
            raise SpawndError(f"The spawnd daemon did not answer at {self.api_url} ({err}).")
        if resp.code == 404 and allow_404:
            return None
        if resp.code >= 400:
            code, message = "internal", f"HTTP {resp.code}"
            try:
                e = json.loads(resp.body)["error"]
                code, message = e.get("code", code), e.get("message", message)
            except Exception:
                pass
            if resp.code == 401:
                message = "the hub's spawnd token was refused; check c.SpawndSpawner.token / token_file"
            raise SpawndError(f"spawnd: {message}", code=code, status=resp.code)
        if not resp.body:
            return {}
        return json.loads(resp.body)

    async def daemon_options(self):
        """The envs and profiles the daemon offers this user's groups."""
        q = urlencode([("group", g) for g in self._groups()])
        return await self._request("GET", "/v1/options" + ("?" + q if q else ""))

    _gateway_connect_url = None  # the hub_connect_url this spawner set itself

    def _hub_address_configured(self):
        """Whether the operator told JupyterHub how servers reach the hub."""
        hub = getattr(self, "hub", None)
        return bool(
            (self.hub_connect_url and self.hub_connect_url != self._gateway_connect_url)
            or (hub is not None and (getattr(hub, "connect_url", "") or getattr(hub, "connect_ip", "")))
        )

    def _check_hub_address(self, api_url):
        """Say so when the address servers get for the hub cannot work from a container."""
        host = urlparse(api_url).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            self.log.warning(
                "%s gets the hub API at %s, a loopback address that its container cannot reach; "
                "set c.JupyterHub.hub_connect_url (or hub_ip) to an address containers reach",
                self._log_name, api_url,
            )

    # --- the Spawner API ---------------------------------------------------

    async def start(self):
        if self.internal_ssl:
            raise SpawndError(
                "spawnd does not support JupyterHub's internal_ssl; "
                "set c.JupyterHub.internal_ssl = False (protect the daemon with tls.cert_file instead)",
                code="invalid",
            )
        try:
            return await self._start()
        except SpawndError as e:
            raise _spawn_error(e) from None

    async def _start(self):
        await _cancel_deferred_stop(self)
        opts = await self.daemon_options()
        net = opts.get("network") or {}
        if not self._hub_address_configured() and self.use_gateway and net.get("mode") == "publish" and net.get("gateway"):
            api = urlparse(self.hub.api_url)
            self.hub_connect_url = self._gateway_connect_url = f"{api.scheme}://{net['gateway']}:{api.port or 80}"
        choice = self.user_options or {}
        env = choice.get("env") or self.default_env
        profile = choice.get("profile") or self.default_profile
        env_info = _pick(opts.get("envs"), env)
        prof_info = _pick(opts.get("profiles"), profile)
        if env_info and env_info.get("port"):
            self.port = int(env_info["port"])
        if prof_info:
            if prof_info.get("memory_mb"):
                self.mem_limit = int(prof_info["memory_mb"]) << 20
            if prof_info.get("cpus"):
                self.cpu_limit = float(prof_info["cpus"])
        environment = {k: str(v) for k, v in self.get_env().items()}
        self._check_hub_address(environment.get("JUPYTERHUB_API_URL", ""))
        body = {"environment": environment, "groups": self._groups()}
        if env:
            body["env"] = env
        if profile:
            body["profile"] = profile
        if self.cmd:
            body["cmd"] = list(self.cmd)
        args = list(self.get_args() or [])
        if args:
            body["args"] = args
        srv = await self._post_start(body)
        self.container_id = srv.get("container_id", "")
        self.env_name = srv.get("env", "")
        self.lock_digest = srv.get("lock_digest", "")
        if srv.get("state") in ("failed", "stopped"):
            raise SpawndError(
                f"spawnd: the server {srv.get('state')}: {srv.get('reason', '')}".rstrip(": "),
                code="server_failed", status=502,
            )
        self.log.info(
            "spawnd started %s (env %s, lock %s) at %s:%s",
            self._log_name, self.env_name, self.lock_digest[:19], srv.get("host"), srv.get("port"),
        )
        return f"http://{srv['host']}:{srv['port']}"

    async def _post_start(self, body):
        """Ask spawnd to start the server; it answers when the server listens,
        or as soon as it fails.

        spawnd answered the options a moment ago; if it goes away now, it is
        most likely restarting (an upgrade, a crash that systemd restarts).
        A start is idempotent in spawnd (a second ask joins the first, or
        finds the server running), so the start is asked again until
        start_timeout instead of failing the user's spawn.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.start_timeout)
        delay = 0.5
        while True:
            try:
                return await self._request(
                    "POST", self._server_path(), body, timeout=max(deadline - loop.time(), 30.0))
            except SpawndError as e:
                if not e.unknown or loop.time() + delay >= deadline:
                    raise
                self.log.warning("spawnd did not answer the start of %s (%s); asking again in %.1f s",
                                 self._log_name, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def get_url(self):
        """Where the server really listens, as spawnd says.

        JupyterHub asks this when it finds a server running at its own start.
        If the hub stopped while a start was in flight, its database holds
        the placeholder address it made before start() returned (a random
        port), and trusting it would route the user's traffic to nothing. A
        server still booting is waited for, up to start_timeout; if spawnd
        cannot say, JupyterHub's own record stands.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.start_timeout)
        while True:
            try:
                srv = await self._request("GET", self._server_path(), timeout=self.request_timeout, allow_404=True)
            except SpawndError as e:
                self.log.warning("Cannot ask spawnd where %s listens: %s", self._log_name, e)
                srv = None
            if srv and srv.get("host") and srv.get("port") and srv.get("state") == "running":
                self.container_id = srv.get("container_id", self.container_id)
                self.env_name = srv.get("env", self.env_name)
                self.lock_digest = srv.get("lock_digest", self.lock_digest)
                return f"http://{srv['host']}:{srv['port']}"
            if not srv or srv.get("state") != "pending" or loop.time() >= deadline:
                return await super().get_url()
            await asyncio.sleep(0.5)

    async def poll(self):
        try:
            srv = await self._request("GET", self._server_path(), timeout=self.request_timeout, allow_404=True)
        except SpawndError as e:
            # Unknown is not stopped: claiming the server gone while it may run
            # would leave a container the hub has forgotten.
            self.log.warning("Cannot poll %s: %s", self._log_name, e)
            return None
        if srv is None:
            return 0
        if srv.get("state") in ("pending", "running"):
            return None
        code = srv.get("exit_code")
        if code is None:
            code = 1 if srv.get("state") == "failed" else 0
        return code

    async def stop(self, now=False):
        last = None
        for attempt in range(max(1, self.stop_retries)):
            try:
                await self._request("DELETE", self._server_path(), timeout=self.request_timeout + 30, allow_404=True)
                self.clear_state()
                return
            except SpawndError as e:
                if not e.unknown and e.status < 500:
                    raise
                last = e
                self.log.warning("Stopping %s failed (try %d): %s", self._log_name, attempt + 1, e)
                if attempt + 1 < self.stop_retries:
                    await asyncio.sleep(min(2 ** attempt, 5))
        # JupyterHub forgets the server even when its stop fails; its
        # container would run on unseen. Keep asking spawnd in the background
        # until it answers (a start of the same server cancels this first).
        if self.stop_retry_for > 0:
            self.log.error(
                "Stopping %s failed: %s JupyterHub now counts it as stopped; spawnd will be asked again "
                "for up to %d s until it answers. The user's home is kept either way.",
                self._log_name, last, self.stop_retry_for,
            )
            _defer_stop(self)
        raise last

    async def rename(self, old_name, new_name):
        """JupyterHub 6 renames only stopped servers; spawnd keys containers by
        (user, server name) and keeps homes per user, so there is nothing to
        move. A container still running under the old name is refused."""
        srv = await self._request("GET", self._server_path(old_name), allow_404=True)
        if srv is not None and srv.get("state") in ("pending", "running"):
            raise SpawndError(
                f"spawnd still runs the server {old_name!r}; stop it before renaming it", code="conflict", status=409
            )

    async def progress(self):
        """Yield the daemon's progress events for the start in flight."""
        queue = asyncio.Queue()
        buf = bytearray()

        def on_chunk(chunk):
            buf.extend(chunk)
            while b"\n\n" in buf:
                frame, _, rest = bytes(buf).partition(b"\n\n")
                buf[:] = rest
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        queue.put_nowait(line[6:])

        async def fetch():
            base, client = self._client("streams")
            for _ in range(50):  # the start request may not have reached the daemon yet
                req = HTTPRequest(
                    base + self._server_path() + "/progress",
                    streaming_callback=on_chunk,
                    **self._request_args(float(self.start_timeout)),
                )
                try:
                    resp = await client.fetch(req, raise_error=False)
                except Exception as e:
                    self.log.warning("Progress of %s unavailable: %s", self._log_name, e)
                    break
                if resp.code not in (404, 503):
                    break
                await asyncio.sleep(0.1)
            queue.put_nowait(None)

        task = asyncio.ensure_future(fetch())
        try:
            while True:
                data = await queue.get()
                if data is None:
                    break
                try:
                    ev = json.loads(data)
                except ValueError:
                    continue
                # JupyterHub shows its own "Server requested" first.
                if ev.get("step") == "accepted":
                    continue
                yield {"progress": int(ev.get("progress", 0)), "message": ev.get("message", "")}
                if ev.get("ready") or ev.get("failed"):
                    break
        finally:
            task.cancel()


def _pick(items, name):
    """The item of that name, or the default one when name is empty."""
    for it in items or []:
        if (name and it.get("name") == name) or (not name and it.get("default")):
            return it
    return None


def _names_from_form(formdata, spawner=None):
    """Keep only the names the form offers; the daemon checks them."""
    out = {}
    for key in ("env", "profile"):
        val = (formdata.get(key) or [""])[0].strip()
        if val:
            out[key] = val
    return out


async def _render_options_form(spawner):
    """An options form with the envs and profiles the daemon offers the user;
    empty (no form) when there is nothing to choose."""
    try:
        opts = await spawner.daemon_options()
    except SpawndError as e:
        spawner.log.warning("No options form for %s: %s", spawner._log_name, e)
        return ""
    envs, profiles = opts.get("envs") or [], opts.get("profiles") or []
    if len(envs) <= 1 and len(profiles) <= 1:
        return ""

    def select(name, label, items, describe):
        rows = []
        for it in items:
            sel = " selected" if it.get("default") else ""
            rows.append(
                f'<option value="{html.escape(it["name"])}"{sel}>{html.escape(describe(it))}</option>'
            )
        return (
            f'<div class="form-group"><label for="spawnd-{name}">{label}</label>'
            f'<select class="form-control" name="{name}" id="spawnd-{name}">{"".join(rows)}</select></div>'
        )

    def env_text(e):
        text = e["name"]
        if e.get("description"):
            text += " - " + e["description"]
        return text

    def profile_text(p):
        parts = [p["name"]]
        if p.get("memory_mb"):
            parts.append(f"{p['memory_mb']} MiB")
        if p.get("cpus"):
            parts.append(f"{p['cpus']:g} CPU")
        return ", ".join(parts)

    form = ""
    if len(envs) > 1:
        form += select("env", "Environment", envs, env_text)
    if len(profiles) > 1:
        form += select("profile", "Resources", profiles, profile_text)
    return form


# Stops that failed while the daemon was unreachable, still being retried:
# (daemon URL, user, server name) -> task.
_deferred_stops = {}


def _stop_key(spawner):
    return (spawner.api_url, spawner.user.name, spawner.name)


def _defer_stop(spawner):
    key = _stop_key(spawner)
    old = _deferred_stops.get(key)
    if old is not None and not old.done():
        return
    path, log, name = spawner._server_path(), spawner.log, spawner._log_name
    deadline = IOLoop.current().time() + spawner.stop_retry_for

    async def retry():
        delay = 2.0
        try:
            while IOLoop.current().time() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                try:
                    await spawner._request("DELETE", path, timeout=spawner.request_timeout + 30, allow_404=True)
                except SpawndError as e:
                    if e.unknown or e.status >= 500:
                        continue
                    log.error("Stopping %s later: spawnd refused: %s", name, e)
                    return
                log.info("Stopped %s after spawnd came back (its home is kept)", name)
                return
            log.error("Gave up stopping %s: spawnd did not answer for %d s; stop it with `spawnd stop`", name, spawner.stop_retry_for)
        finally:
            if _deferred_stops.get(key) is task:
                del _deferred_stops[key]

    task = asyncio.ensure_future(retry())
    _deferred_stops[key] = task


async def _cancel_deferred_stop(spawner):
    task = _deferred_stops.pop(_stop_key(spawner), None)
    if task is not None and not task.done():
        spawner.log.info("A new start of %s cancels the stop still being retried", spawner._log_name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
