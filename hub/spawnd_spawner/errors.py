"""The spawner's errors: what the daemon refused, in words for the spawn page."""

try:  # JupyterHub >= 6: spawn failures with a reason and an HTTP status
    from jupyterhub.spawner import SpawnException as _SpawnException
except ImportError:  # JupyterHub 3, 4, 5
    _SpawnException = None


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
