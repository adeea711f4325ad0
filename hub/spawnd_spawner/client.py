"""How the spawner reaches the daemon: the API URL, a resolver for unix
sockets, path segments, and the one retry helper every loop of the spawner
uses."""

import asyncio
import socket
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
