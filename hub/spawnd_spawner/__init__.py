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

from ._version import __version__
from .client import _parse_api_url  # noqa: F401 (importable from the package)
from .errors import SpawndError
from .spawner import SpawndSpawner

__all__ = ["SpawndSpawner", "SpawndError", "__version__"]

# The package's rooms: spawner (the Spawner API), client (the API URL and
# the one retry helper), errors (what the spawn page says), form (the
# options form), stops (stops retried in the background).
