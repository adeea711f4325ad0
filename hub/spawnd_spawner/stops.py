"""Stops that failed while the daemon was unreachable, retried in the
background until it answers (JupyterHub counts the server as stopped
anyway), and cancelled by a new start of the same server."""

import asyncio

from .client import attempts
from .errors import SpawndError


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
    deadline = asyncio.get_running_loop().time() + spawner.stop_retry_for

    async def retry():
        try:
            async for n in attempts(first=2.0, cap=60.0, deadline=deadline):
                if n == 0:
                    continue  # the stop itself just failed: wait first
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
