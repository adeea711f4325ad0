"""How the spawner reaches the daemon: the API URL, a resolver for unix
sockets, path segments, and the one retry helper every loop of the spawner
uses."""

import asyncio
import atexit
import socket
import weakref
from urllib.parse import quote, unquote, urlparse

from tornado.netutil import Resolver


def _segment(name):
    """Percent-encode a name as one path segment, dots included, so that
    names like '..' or 'a/b' stay names."""
    return quote(name, safe="").replace(".", "%2E")


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


async def attempts(*, first, cap=None, factor=2.0, deadline=None, tries=None):
    """Yield 0, 1, 2, ... for the tries of an operation, sleeping between
    them: first seconds, then each wait times factor, at most cap. It ends
    after tries tries, or when the next wait would pass deadline (a time of
    the running loop): the caller's last try is then the one it just made.

    The one retry helper of the spawner: a start asked again while the
    daemon restarts, a stop retried, a deferred stop, waiting for a server
    to leave "pending", a progress stream whose start has not arrived yet.
    """
    loop = asyncio.get_running_loop()
    delay, n = first, 0
    while True:
        yield n
        n += 1
        if tries is not None and n >= tries:
            return
        if deadline is not None and loop.time() + delay >= deadline:
            return
        await asyncio.sleep(delay)
        delay = delay * factor
        if cap is not None:
            delay = min(delay, cap)


class _Clients:
    """The HTTP clients the spawners of one hub process share: one per
    event loop, kind ('calls' or 'streams'), daemon socket and size. A
    client is closed when the last spawner that used it is gone (garbage
    collected: JupyterHub drops a spawner with its user or named server),
    and every one left is closed when the process exits."""

    def __init__(self):
        self._clients = {}  # key -> (client, ids of the spawners holding it, the loop)

    def get(self, owner, key, make, loop):
        entry = self._clients.get(key)
        if entry is not None and entry[2]() is not loop:
            # An id(loop) reused by a new loop: the old client is dead with its loop.
            self._drop(key)
            entry = None
        if entry is None:
            entry = (make(), set(), weakref.ref(loop))
            self._clients[key] = entry
        client, holders, _ = entry
        if id(owner) not in holders:
            holders.add(id(owner))
            weakref.finalize(owner, self._release, key, id(owner))
        return client

    def _release(self, key, owner_id):
        entry = self._clients.get(key)
        if entry is None:
            return
        entry[1].discard(owner_id)
        if not entry[1]:
            self._drop(key)

    def _drop(self, key):
        client = self._clients.pop(key)[0]
        try:
            client.close()
        except Exception:  # noqa: BLE001 - a client of a closed loop
            pass

    def open_count(self):
        """How many clients are open (for tests)."""
        return len(self._clients)

    def close_all(self):
        for key in list(self._clients):
            self._drop(key)


CLIENTS = _Clients()
atexit.register(CLIENTS.close_all)
