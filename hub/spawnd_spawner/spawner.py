"""SpawndSpawner: JupyterHub's Spawner API on spawnd's HTTP API."""

import asyncio
import ipaddress
import json
import os
from urllib.parse import urlencode, urlparse

from jupyterhub.spawner import Spawner
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop
from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

from .client import CLIENTS, _UnixResolver, _parse_api_url, _segment, attempts
from .errors import SpawndError, _spawn_error
from .form import _names_from_form, _pick, _render_options_form
from .stops import _cancel_deferred_stop, _defer_stop


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
    env_option = Unicode(
        "env",
        config=True,
        help="""The key of user_options that names the env. Under a wrapper spawner that owns this key
        for its own choice (wrapspawner's ProfilesSpawner and KubeSpawner-style profile lists own
        "profile"), set another key, or '' to always use default_env.""",
    )
    profile_option = Unicode(
        "profile",
        config=True,
        help="""The key of user_options that names the resource profile. Under wrapspawner's
        ProfilesSpawner, which hands its own "profile" choice to its child, set '' (always
        default_profile, which each wrapper profile can set) or another key.""",
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

    @validate("api_url")
    def _validate_api_url(self, proposal):
        # Checked when the config is applied, not at the first request.
        try:
            _parse_api_url(proposal["value"])
        except ValueError as e:
            raise TraitError(f"c.SpawndSpawner.{e}") from None
        return proposal["value"]

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

    # Clients are shared by the spawners of the hub process, one pair per
    # event loop and daemon address, and closed with the last spawner that
    # used them (client.CLIENTS).

    def _client(self, kind):
        """The spawner's own HTTP client: kind 'calls' for short requests,
        'streams' for progress streams, so that open streams never hold up a
        start, a poll or a stop."""
        base, sock = _parse_api_url(self.api_url)
        loop = IOLoop.current()
        key = (id(loop), kind, sock, self.max_connections)

        def make():
            kw = {"max_clients": self.max_connections}
            if sock:
                kw["resolver"] = _UnixResolver(path=sock)
            return AsyncHTTPClient(force_instance=True, **kw)

        return base, CLIENTS.get(self, key, make, loop)

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

    def _chosen(self, opts, kind, key, default):
        """The env or profile name the user chose under user_options[key],
        else the default. A chosen name the daemon does not offer is refused
        here, naming the key: under a wrapper that owns the key, the value is
        the wrapper's, and the fix is a setting."""
        val = ""
        if key:
            val = (self.user_options or {}).get(key) or ""
        if not val:
            return default
        if not isinstance(val, str):
            raise SpawndError(
                f"user_options[{key!r}] must be the name of one of spawnd's {kind}s, not {type(val).__name__}",
                code="invalid", status=400,
            )
        names = [it.get("name") for it in opts.get(kind + "s") or []]
        if names and val not in names:
            raise SpawndError(
                f"user_options[{key!r}] is {val!r}, which is not one of spawnd's {kind}s ({', '.join(names)}). "
                f"If a wrapper spawner owns the {key!r} option for its own choice, set "
                f"c.SpawndSpawner.{kind}_option to another key, or to '' to use default_{kind}",
                code="invalid", status=400,
            )
        return val

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
        env = self._chosen(opts, "env", self.env_option, self.default_env)
        profile = self._chosen(opts, "profile", self.profile_option, self.default_profile)
        env_info = _pick(opts.get("envs"), env)
        prof_info = _pick(opts.get("profiles"), profile)
        # The server listens on every address of its container, on the
        # env's port: spawnd routes that, and nothing else reaches it. Set
        # here, not only as defaults: a wrapper spawner (ProfilesSpawner)
        # links its own ip (127.0.0.1) and port (a random one) into its
        # child, and the server then listened where spawnd never looks.
        self.ip = "0.0.0.0"
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
        last = None
        async for _ in attempts(first=0.5, cap=5.0, deadline=deadline):
            try:
                return await self._request(
                    "POST", self._server_path(), body, timeout=max(deadline - loop.time(), 30.0))
            except SpawndError as e:
                if not e.unknown:
                    raise
                last = e
                self.log.warning("spawnd did not answer the start of %s (%s); asking again", self._log_name, e)
        raise last

    async def get_url(self):
        """Where the server really listens, as spawnd says.

        JupyterHub asks this when it finds a server running at its own start.
        If the hub stopped while a start was in flight, its database holds
        the placeholder address it made before start() returned (a random
        port), and trusting it would route the user's traffic to nothing. A
        server still booting is waited for, up to start_timeout; if spawnd
        cannot say, JupyterHub's own record stands.
        """
        deadline = asyncio.get_running_loop().time() + float(self.start_timeout)
        async for _ in attempts(first=0.5, factor=1.0, deadline=deadline):
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
            if not srv or srv.get("state") != "pending":
                break
        return await super().get_url()

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
        async for attempt in attempts(first=1.0, cap=5.0, tries=max(1, self.stop_retries)):
            try:
                await self._request("DELETE", self._server_path(), timeout=self.request_timeout + 30, allow_404=True)
                self.clear_state()
                return
            except SpawndError as e:
                if not e.unknown and e.status < 500:
                    raise
                last = e
                self.log.warning("Stopping %s failed (try %d): %s", self._log_name, attempt + 1, e)
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
            # The start request may not have reached the daemon yet.
            async for _ in attempts(first=0.1, factor=1.0, tries=50):
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
