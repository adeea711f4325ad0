# JupyterHub configuration for a hub that runs its users' servers through spawnd.
#
# Hub on the host (the quickstart's set-up, and deploy/systemd/):
#   spawnd publishes each server's port on 127.0.0.1, so the hub's proxy
#   reaches it there. The single-user servers must reach the hub's API from
#   inside their containers: the hub listens on the user network's gateway
#   (GET /v1/options reports it; this file asks spawnd at start-up), and
#   SpawndSpawner points the servers there by itself (use_gateway).
#
# Hub in a container (deploy/docker-compose.yml): the stack runs the hub
#   container with host networking, so everything above holds unchanged.
#   (Putting hub and user servers on one bridge network would need
#   inter-container traffic on, and then users could reach each other's
#   servers; see docs/DESIGN-NOTES.md.)
import ipaddress
import json
import os
import sys
import urllib.request

c = get_config()  # noqa: F821  (JupyterHub provides get_config)

SPAWND_URL = os.environ.get("SPAWND_URL", "http://127.0.0.1:8765")
SPAWND_TOKEN_FILE = os.environ.get("SPAWND_TOKEN_FILE", "/etc/spawnd/token")


def spawnd_gateway():
    """Ask spawnd for its user network's gateway: the address on which
    containers reach a hub that runs on the host."""
    try:
        with open(SPAWND_TOKEN_FILE) as f:
            token = f.read().strip()
        req = urllib.request.Request(SPAWND_URL + "/v1/options", headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["network"]["gateway"]
    except Exception as e:  # spawnd down or old: fall back, and say so
        print(f"jupyterhub_config: cannot ask spawnd for its gateway ({e}); set SPAWND_HUB_IP")
        return "127.0.0.1"

# --- where users come in ---------------------------------------------------
c.JupyterHub.ip = os.environ.get("SPAWND_HUB_BIND", "127.0.0.1")  # HTTPS in front: deploy/Caddyfile
c.JupyterHub.port = int(os.environ.get("SPAWND_HUB_PORT", "8000"))

# The hub's own API, which the single-user servers call. It must be reachable
# from the containers: the gateway of spawnd's user network (not 127.0.0.1).
c.JupyterHub.hub_ip = os.environ.get("SPAWND_HUB_IP") or spawnd_gateway()
c.JupyterHub.hub_port = int(os.environ.get("SPAWND_HUB_API_PORT", "8081"))

# --- spawnd ----------------------------------------------------------------
c.JupyterHub.spawner_class = "spawnd"  # SpawndSpawner: pip install spawnd-spawner (hub/)
c.SpawndSpawner.api_url = SPAWND_URL
c.SpawndSpawner.token_file = SPAWND_TOKEN_FILE
# Env and resource profile when a user chooses none ("" = the daemon's defaults).
# Users choose by name in the spawn form; the daemon decides what their
# JupyterHub groups allow (spawnd.yaml: teams).
# c.SpawndSpawner.default_env = "team"
# c.SpawndSpawner.default_profile = "default"
# TLS to the daemon (when spawnd serves with tls.cert_file/key_file):
# c.SpawndSpawner.api_url = "https://spawnd.internal:8765"
# c.SpawndSpawner.ca_file = "/etc/spawnd/ca.pem"

# Servers keep running when the hub restarts or is upgraded; spawnd adopts
# them, and the hub finds them again.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True
# The daemon answers a start when the server listens; a class start queues
# behind spawnd's admission limit (max_concurrent_starts), so give it time.
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 60

# --- who may log in --------------------------------------------------------
# SPAWND_HUB_AUTH chooses (spawnd install-systemd asks at install time):
#   pam     system users of this machine (the default). Members of the group
#           SPAWND_HUB_USERS_GROUP (default jupyterhub-users) may log in;
#           members of SPAWND_HUB_ADMIN_GROUP (default jupyterhub-admins) are
#           admins. Add people with: adduser alice; adduser alice jupyterhub-users
#   github  GitHub OAuth (pip install oauthenticator): docs/INSTALL.md
#   native  self-service accounts with admin approval
#           (jupyterhub-nativeauthenticator): people sign up at /hub/signup,
#           an admin authorises them at /hub/authorize, passwords are stored
#           bcrypt-hashed. The admin account (SPAWND_HUB_ADMIN, default admin)
#           is made at start with the password in SPAWND_HUB_ADMIN_PASSWORD_FILE,
#           so nobody else can sign up under its name first.
#           The compose stack's HTTPS set-up uses it.
#   dummy   one shared password, for a laptop: only with SPAWND_HUB_PASSWORD
#           set, the hub on a loopback address and no front (SPAWND_HUB_FRONT
#           unset); anything else refuses to start. A login that reached the
#           hub from another machine (through Caddy or any proxy that says so
#           in X-Forwarded-For) is refused as well.
AUTH = os.environ.get("SPAWND_HUB_AUTH", "pam")
# SPAWND_HUB_FRONT: the public URL of an HTTPS front (Caddy) when there is
# one (scripts/compose-up sets it with SPAWND_HTTPS=1). It is what people
# reach from other machines, so no shared-password login may sit behind it.
FRONT = os.environ.get("SPAWND_HUB_FRONT", "")
ADMIN = os.environ.get("SPAWND_HUB_ADMIN", "admin")


def refuse(why, fix):
    """Stop the hub before it accepts a single login."""
    sys.stderr.write(f"jupyterhub_config: refusing to start: {why}.\n  Fix: {fix}\n")
    sys.exit(1)


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if AUTH == "dummy":
    password = os.environ.get("SPAWND_HUB_PASSWORD", "")
    if not password:
        refuse("SPAWND_HUB_AUTH=dummy without SPAWND_HUB_PASSWORD would let anyone log in as anyone, admin included",
               "set SPAWND_HUB_PASSWORD, or use SPAWND_HUB_AUTH=pam (system users) or github")
    if len(password) < 8:
        refuse("SPAWND_HUB_PASSWORD is shorter than 8 characters", "choose a longer password")
    if not loopback(c.JupyterHub.ip):
        refuse(f"the shared-password login would listen on {c.JupyterHub.ip!r}, reachable from other machines",
               "set SPAWND_HUB_BIND=127.0.0.1, or use SPAWND_HUB_AUTH=native, pam or github")
    if FRONT:
        refuse(f"the shared-password login would sit behind the HTTPS front {FRONT!r}, which other machines reach: "
               "everyone who knows the password could log in as anyone, admin included",
               "use SPAWND_HUB_AUTH=native (sign-up with admin approval), pam or github "
               "(scripts/compose-up with SPAWND_HTTPS=1 chooses native by itself)")
    from jupyterhub.auth import DummyAuthenticator

    class LoopbackDummyAuthenticator(DummyAuthenticator):
        """The shared password, accepted only from this machine: every address
        the request passed through (the client's, and each proxy's in
        X-Forwarded-For, which Caddy and configurable-http-proxy append to)
        must be a loopback address. A front added later without
        SPAWND_HUB_FRONT still cannot carry a stranger in."""

        async def authenticate(self, handler, data):
            hops = [handler.request.remote_ip or ""]
            hops += [h.strip() for h in handler.request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
            hops += [h.strip() for h in handler.request.headers.get_list("X-Real-Ip")]
            if not all(loopback(h) for h in hops):
                self.log.warning("refused the shared-password login of %.64r: it came from %.200s, not this machine",
                                 data.get("username", ""), ", ".join(hops))
                return None
            return await super().authenticate(handler, data)

    c.JupyterHub.authenticator_class = LoopbackDummyAuthenticator
    c.DummyAuthenticator.password = password
    c.Authenticator.allow_all = True  # anyone on this machine who knows the shared password
    c.Authenticator.admin_users = {ADMIN}
elif AUTH == "native":
    import importlib.util

    if importlib.util.find_spec("nativeauthenticator") is None:
        refuse(f"SPAWND_HUB_AUTH=native but jupyterhub-nativeauthenticator is not installed next to the hub ({sys.executable})",
               f"{sys.executable} -m pip install jupyterhub-nativeauthenticator==1.3.0")
    path = os.environ.get("SPAWND_HUB_ADMIN_PASSWORD_FILE", "")
    if not path:
        refuse("SPAWND_HUB_AUTH=native without SPAWND_HUB_ADMIN_PASSWORD_FILE: the first stranger to sign up as "
               f"{ADMIN!r} would become the admin",
               "write the admin's password (12+ characters) to a root-only file and set SPAWND_HUB_ADMIN_PASSWORD_FILE")
    try:
        with open(path) as f:
            admin_password = f.read().strip()
    except OSError as e:
        refuse(f"cannot read SPAWND_HUB_ADMIN_PASSWORD_FILE ({e})", f"check {path}")
    if len(admin_password) < 12:
        refuse(f"the admin password in {path} is shorter than 12 characters", "write a longer one")
    import bcrypt
    from nativeauthenticator import NativeAuthenticator
    from nativeauthenticator import handlers as native_handlers
    from nativeauthenticator.orm import UserInfo

    class _NoStatsd:
        """JupyterHub 6 dropped statsd, which NativeAuthenticator 1.3.0's
        login handler still times itself with."""

        def timer(self, *_):
            return self

        def start(self):
            return self

        def stop(self, *_, **__):
            pass

    class NativeLoginHandler(native_handlers.LoginHandler):
        """NativeAuthenticator 1.3.0's login page, made to run on
        JupyterHub 6 (shown by hub/tests/test_shipped_config.py there)."""

        @property
        def statsd(self):
            try:
                return super().statsd
            except AttributeError:
                return _NoStatsd()

        def _render(self, login_error=None, username=None, **_):
            return super()._render(login_error=login_error, username=username)

    class SeededNativeAuthenticator(NativeAuthenticator):
        """NativeAuthenticator whose admin account exists before the first
        request, so a sign-up can never claim the admin's name. An existing
        admin account keeps its password (the admin may have changed it)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if UserInfo.find(self.db, ADMIN) is None:
                self.db.add(UserInfo(username=ADMIN, is_authorized=True,
                                     password=bcrypt.hashpw(admin_password.encode(), bcrypt.gensalt())))
                self.db.commit()
                self.log.info("made the admin account %s (password: %s)", ADMIN, path)

        def get_handlers(self, app):
            return [(path, NativeLoginHandler if path == r"/login" else handler)
                    for path, handler in super().get_handlers(app)]

    c.JupyterHub.authenticator_class = SeededNativeAuthenticator
    c.NativeAuthenticator.open_signup = False        # every sign-up waits for an admin
    c.NativeAuthenticator.minimum_password_length = 10
    c.NativeAuthenticator.check_common_password = True
    c.NativeAuthenticator.allowed_failed_logins = 5  # then 10 minutes' pause for that name
    c.NativeAuthenticator.seconds_before_next_try = 600
    c.Authenticator.admin_users = {ADMIN}
    # Who may log in is NativeAuthenticator's approval, not an allow-list.
    c.Authenticator.allow_all = True
elif AUTH == "pam":
    c.JupyterHub.authenticator_class = "pam"
    c.PAMAuthenticator.allowed_groups = {os.environ.get("SPAWND_HUB_USERS_GROUP", "jupyterhub-users")}
    c.PAMAuthenticator.admin_groups = {os.environ.get("SPAWND_HUB_ADMIN_GROUP", "jupyterhub-admins")}
elif AUTH == "github":
    def secret(name):
        path = os.environ.get(name + "_FILE", "")
        if not path:
            refuse(f"SPAWND_HUB_AUTH=github needs {name}_FILE", f"write the value to a root-only file and set {name}_FILE to its path")
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            refuse(f"cannot read {name}_FILE ({e})", f"check {path}")

    c.JupyterHub.authenticator_class = "github"
    c.GitHubOAuthenticator.client_id = secret("GITHUB_CLIENT_ID")
    c.GitHubOAuthenticator.client_secret = secret("GITHUB_CLIENT_SECRET")
    c.GitHubOAuthenticator.oauth_callback_url = os.environ.get("GITHUB_CALLBACK_URL", "")
    orgs = {o for o in os.environ.get("GITHUB_ALLOWED_ORGS", "").split(",") if o}
    users = {u for u in os.environ.get("GITHUB_ALLOWED_USERS", "").split(",") if u}
    if not (orgs or users):
        refuse("SPAWND_HUB_AUTH=github without GITHUB_ALLOWED_ORGS or GITHUB_ALLOWED_USERS would let every GitHub user in",
               "set GITHUB_ALLOWED_ORGS=my-lab (and/or GITHUB_ALLOWED_USERS=alice,bob)")
    c.GitHubOAuthenticator.allowed_organizations = orgs
    c.GitHubOAuthenticator.allowed_users = users
    c.GitHubOAuthenticator.admin_users = {u for u in os.environ.get("GITHUB_ADMIN_USERS", "").split(",") if u}
    if os.environ.get("GITHUB_URL"):  # GitHub Enterprise, or a test's stand-in
        c.GitHubOAuthenticator.github_url = os.environ["GITHUB_URL"]
else:
    refuse(f"SPAWND_HUB_AUTH={AUTH!r} is not one of pam, native, github, dummy", "set SPAWND_HUB_AUTH")
# JupyterHub groups decide which spawnd team (envs, profiles, shared folders) a user is in:
# c.JupyterHub.load_groups = {"physics": ["alice", "bob"]}

# --- idle culling ----------------------------------------------------------
# jupyterhub-idle-culler (pip install jupyterhub-idle-culler, as for the hub)
# runs as a hub-managed service and stops servers nobody has used for
# SPAWND_CULL_IDLE_TIMEOUT seconds (default 3600: one hour, as TLJH and z2jh
# ship it), checking every SPAWND_CULL_EVERY seconds (default 300). Stopping
# a server removes its container only: the user's home stays. Set
# SPAWND_CULL_IDLE_TIMEOUT=0 to keep idle servers running.
def seconds(name, default):
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
    except ValueError:
        refuse(f"{name}={raw!r} is not a whole number of seconds", f"set {name}=3600 (or 0 to turn culling off)")
    if value < 0:
        refuse(f"{name}={raw!r} is negative", f"set {name}=3600 (or 0 to turn culling off)")
    return value


cull_timeout = seconds("SPAWND_CULL_IDLE_TIMEOUT", "3600")
if cull_timeout:
    import importlib.util

    if importlib.util.find_spec("jupyterhub_idle_culler") is None:
        refuse(f"idle culling is on (SPAWND_CULL_IDLE_TIMEOUT={cull_timeout}) but jupyterhub-idle-culler "
               f"is not installed next to the hub ({sys.executable})",
               f"{sys.executable} -m pip install jupyterhub-idle-culler, or set SPAWND_CULL_IDLE_TIMEOUT=0")
    cull_every = seconds("SPAWND_CULL_EVERY", str(min(300, max(1, cull_timeout // 2))))
    # The culler ends with the hub, however the hub ends: JupyterHub stops
    # its managed services when it exits cleanly, but a hub killed with -9
    # left the culler running (parent 1), and the next hub started a second.
    # The launcher asks the kernel to send it SIGTERM when the hub dies
    # (PR_SET_PDEATHSIG) before it runs the culler in the same process; it
    # exits at once if the hub died before it got that far.
    culler_launcher = (
        "import ctypes, os, runpy, signal, sys\n"
        "hub = int(sys.argv.pop(1))\n"
        "if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0: sys.exit('prctl(PR_SET_PDEATHSIG) failed')\n"
        "if os.getppid() != hub: sys.exit('idle-culler: the hub that started it is gone')\n"
        "sys.argv[0] = 'jupyterhub_idle_culler'\n"
        "runpy.run_module('jupyterhub_idle_culler', run_name='__main__', alter_sys=True)\n"
    )
    c.JupyterHub.services.append({
        "name": "idle-culler",
        "command": [sys.executable, "-c", culler_launcher, str(os.getpid()),
                    f"--timeout={cull_timeout}", f"--cull-every={cull_every}"],
    })
    # Only what culling needs: list users, read activity, stop servers.
    c.JupyterHub.load_roles.append({
        "name": "idle-culler",
        "description": "Stop servers that have been idle (jupyterhub-idle-culler)",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    })

# --- state -----------------------------------------------------------------
state = os.environ.get("SPAWND_HUB_STATE", "/var/lib/jupyterhub")
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{state}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = f"{state}/proxy.pid"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + os.environ.get("SPAWND_PROXY_API_PORT", "8001")
