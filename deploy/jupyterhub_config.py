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
import json
import os
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
c.JupyterHub.spawner_class = "spawnd_spawner.SpawndSpawner"  # or "spawnd" once pip-installed
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
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# --- who may log in --------------------------------------------------------
# The quickstart uses the DummyAuthenticator with one shared password: fine on
# a laptop, never on a network. For a team, use a real authenticator, e.g.
# GitHub OAuth (pip install oauthenticator; see docs/USERS.md):
#   c.JupyterHub.authenticator_class = "github"
#   c.GitHubOAuthenticator.oauth_callback_url = "https://hub.example.org/hub/oauth_callback"
#   c.GitHubOAuthenticator.client_id = os.environ["GITHUB_CLIENT_ID"]
#   c.GitHubOAuthenticator.client_secret = os.environ["GITHUB_CLIENT_SECRET"]
#   c.GitHubOAuthenticator.allowed_organizations = {"my-lab"}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("SPAWND_HUB_PASSWORD", "")
c.Authenticator.admin_users = {os.environ.get("SPAWND_HUB_ADMIN", "admin")}
# JupyterHub groups decide which spawnd team (envs, profiles, shared folders) a user is in:
# c.JupyterHub.load_groups = {"physics": ["alice", "bob"]}

# --- state -----------------------------------------------------------------
state = os.environ.get("SPAWND_HUB_STATE", "/var/lib/jupyterhub")
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{state}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = f"{state}/proxy.pid"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + os.environ.get("SPAWND_PROXY_API_PORT", "8001")
