"""Unit tests of SpawndSpawner on JupyterHub's real Spawner base (its
defaults, get_env, options hooks) against a fake spawnd daemon."""

import asyncio
import json
import logging

import jupyterhub
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import USER, Hubworld, free_port
from spawnd_spawner import SpawndError, SpawndSpawner

JH = tuple(int(x) for x in jupyterhub.__version__.split(".")[:2])


def posts(daemon):
    return [json.loads(body) for method, _, body in daemon.calls if method == "POST"]


async def test_start_poll_stop_and_state(daemon, world):
    sp = world.spawner(daemon.url)
    sp.user_options = {"env": "gpu"}
    assert await sp.start() == "http://127.0.0.1:40001"
    [req] = posts(daemon)
    assert [c[1] for c in daemon.calls if c[0] == "POST"] == [f"/v1/users/{USER}/server"]
    assert req["env"] == "gpu" and req["groups"] == ["physics"]
    env = req["environment"]
    assert env["JUPYTERHUB_API_TOKEN"] == "secret-hub-token-0123456789"
    assert env["JUPYTERHUB_USER"] == USER
    assert set(req) <= {"env", "profile", "environment", "cmd", "args", "groups"}
    # No connect address configured: servers reach the hub on the user network's gateway.
    assert env["JUPYTERHUB_API_URL"] == "http://172.18.0.1:8081/hub/api"
    assert await sp.poll() is None
    state = sp.get_state()
    assert state["container_id"] == "c1" and state["lock_digest"] == "sha256:abc"
    sp2 = Hubworld().spawner(daemon.url)
    sp2.load_state(state)
    assert sp2.container_id == "c1"
    await sp.stop()
    assert await sp.poll() == 0
    assert sp.get_state().get("container_id") is None
    await sp.stop()  # stopping a stopped server is fine


@pytest.mark.parametrize("how", ["JupyterHub.hub_connect_url", "JupyterHub.hub_connect_ip", "Spawner.hub_connect_url"])
async def test_a_configured_hub_address_is_kept(daemon, how):
    if how == "JupyterHub.hub_connect_url":
        world = Hubworld(connect_url="http://172.17.0.1:8081/hub/")
        want = "http://172.17.0.1:8081/hub/api"
    elif how == "JupyterHub.hub_connect_ip":
        world = Hubworld(connect_ip="10.1.2.3")
        want = "http://10.1.2.3:8081/hub/api"
    else:
        world = Hubworld()
        want = "http://hub.internal:8081/hub/api"
    sp = world.spawner(daemon.url)
    if how == "Spawner.hub_connect_url":
        sp.hub_connect_url = "http://hub.internal:8081"
    await sp.start()
    assert posts(daemon)[0]["environment"]["JUPYTERHUB_API_URL"] == want


async def test_a_loopback_hub_address_is_logged(daemon):
    world = Hubworld(connect_url="http://127.0.0.1:8081/hub/")
    sp = world.spawner(daemon.url)
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    sp.log.addHandler(handler)
    try:
        await sp.start()
    finally:
        sp.log.removeHandler(handler)
    assert any("loopback address that its container cannot reach" in r.getMessage() for r in seen)


async def test_env_command_port_and_limits(daemon, world):
    sp = world.spawner(daemon.url, default_url="/lab", args=["--ServerApp.shutdown_no_activity_timeout=600"])
    await sp.start()
    req = posts(daemon)[0]
    assert "cmd" not in req, "Spawner.cmd defaults to None: the env's own command runs"
    assert req["args"] == ["--ServerApp.shutdown_no_activity_timeout=600"]
    env = req["environment"]
    assert env["JUPYTERHUB_DEFAULT_URL"] == "/lab"
    assert env["JUPYTERHUB_SERVICE_URL"].startswith("http://0.0.0.0:9999/"), "the env's port (9999) is used"
    assert env["MEM_LIMIT"] == str(2048 << 20) and env["CPU_LIMIT"] == "1.5"

    sp2 = world.spawner(daemon.url, name="other", cmd=["start-notebook.sh"])
    sp2.user_options = {"env": "gpu"}
    await sp2.start()
    req = posts(daemon)[1]
    assert req["cmd"] == ["start-notebook.sh"]
    assert req["environment"]["JUPYTERHUB_SERVICE_URL"].startswith("http://0.0.0.0:8888/")


async def test_internal_ssl_is_refused(daemon, world):
    sp = world.spawner(daemon.url)
    sp.internal_ssl = True
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "internal_ssl" in str(e.value)
    assert posts(daemon) == []


async def test_named_server_path_is_escaped(daemon, world):
    sp = world.spawner(daemon.url, name="my lab.1")
    await sp.start()
    assert list(daemon.servers) == [(USER, "my lab.1")]


async def test_a_class_start_never_queues_behind_ten_requests(daemon):
    """100 starts at once: every POST reaches the daemon while all the others
    are still open (the fake daemon holds each until 100 are in flight). The
    hub's shared client, which allows 10, would deadlock here."""
    world = Hubworld()
    n = 100
    daemon.hold_posts_until = n
    spawners = [world.spawner(daemon.url, user=f"student{i:03d}") for i in range(n)]
    results = await asyncio.gather(*(sp.start() for sp in spawners), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == [], errors[:3]
    assert daemon.max_in_flight == n
    shared = AsyncHTTPClient()
    assert not getattr(shared, "active", {}), "the hub's shared client must not carry the spawner's calls"


async def test_progress_in_order_without_a_second_server_requested(daemon, world):
    daemon.progress_503 = 2  # the daemon is still syncing: the spawner asks again
    sp = world.spawner(daemon.url)
    events = [ev async for ev in sp.progress()]
    assert [e["progress"] for e in events] == [30, 70, 100]
    assert events[-1]["message"] == "Server is listening"
    assert all(set(e) == {"progress", "message"} for e in events)


async def test_progress_stream_closed_mid_way_ends_cleanly(daemon, world):
    daemon.progress_cut = True
    sp = world.spawner(daemon.url)
    events = await asyncio.wait_for(_collect(sp.progress()), 30)
    assert [e["progress"] for e in events] == [30]


async def _collect(agen):
    return [ev async for ev in agen]


async def test_progress_over_a_unix_socket(unix_daemon, world):
    sp = world.spawner(unix_daemon.url)
    assert await sp.start() == "http://127.0.0.1:40001"
    assert [e["progress"] async for e in sp.progress()] == [30, 70, 100]
    await sp.stop()
    assert await sp.poll() == 0


def test_api_url_is_checked():
    from spawnd_spawner import _parse_api_url
    assert _parse_api_url("http+unix:///run/spawnd/api.sock") == ("http://spawnd", "/run/spawnd/api.sock")
    assert _parse_api_url("https://spawnd:8765/") == ("https://spawnd:8765", None)
    for bad in ["ftp://x", "spawnd:8765", "http+unix://relative.sock"]:
        with pytest.raises(ValueError):
            _parse_api_url(bad)


def test_a_bad_api_url_fails_when_the_config_is_applied():
    # Not at the first request: the trait refuses it, naming the setting.
    from traitlets import TraitError
    from traitlets.config import Config

    c = Config()
    c.SpawndSpawner.api_url = "ftp://spawnd:8765"
    with pytest.raises(TraitError, match=r"c\.SpawndSpawner\.api_url 'ftp://spawnd:8765' must be"):
        SpawndSpawner(config=c)
    assert SpawndSpawner(config=Config()).api_url == "http://127.0.0.1:8765"


async def test_one_retry_helper_keeps_its_bounds():
    from spawnd_spawner.client import attempts

    assert [n async for n in attempts(first=0.001, tries=3)] == [0, 1, 2]
    loop = asyncio.get_running_loop()
    # A deadline ends it before a wait that would pass it: one that is
    # already here allows the one try; a far one leaves tries in charge.
    assert [n async for n in attempts(first=0.001, deadline=loop.time())] == [0]
    assert [n async for n in attempts(first=0.001, deadline=loop.time() + 3600, tries=2)] == [0, 1]


async def test_options_form_offers_names_only(daemon, world):
    sp = world.spawner(daemon.url)
    form = await sp.get_options_form()
    assert 'name="env"' in form and 'value="gpu"' in form and "CUDA" in form
    assert 'name="profile"' not in form  # one profile: nothing to choose
    assert [c[1] for c in daemon.calls] == ["/v1/options"]
    assert sp.run_options_from_form({"env": ["gpu"], "image": ["evil"], "profile": [""]}) == {"env": "gpu"}
    daemon.options["envs"] = daemon.options["envs"][:1]
    assert await sp.get_options_form() == ""


async def test_options_from_form_is_configurable(daemon, world):
    sp = world.spawner(daemon.url, options_from_form=lambda form: {"profile": "big"})
    assert sp.run_options_from_form({"env": ["gpu"]}) == {"profile": "big"}


async def test_user_options_keys_are_configurable(daemon, world):
    # Under wrapspawner's ProfilesSpawner, user_options["profile"] is the
    # wrapper's choice ("spawnd"), handed on to its child unchanged.
    sp = world.spawner(daemon.url, profile_option="", env_option="course")
    sp.user_options = {"profile": "spawnd", "course": "gpu"}
    # What a wrapper links into its child: its own address and a random port.
    sp.ip, sp.port = "127.0.0.1", 54321
    await sp.start()
    [req] = posts(daemon)
    assert req["env"] == "gpu" and "profile" not in req
    # The server listens where spawnd routes: every address, the env's port.
    assert req["environment"]["JUPYTERHUB_SERVICE_URL"].startswith("http://0.0.0.0:8888/"), req["environment"]
    form = await sp.get_options_form()
    assert 'name="course"' in form and 'name="env"' not in form
    assert sp.run_options_from_form({"course": ["gpu"], "env": ["team"], "profile": ["x"]}) == {"course": "gpu"}


@pytest.mark.parametrize("key,value", [("profile", "spawnd"), ("env", "nope"), ("env", ["gpu"])])
async def test_an_unknown_choice_names_its_key_and_starts_nothing(daemon, world, key, value):
    sp = world.spawner(daemon.url)
    sp.user_options = {key: value}
    with pytest.raises(Exception) as e:
        await sp.start()
    msg = str(e.value)
    assert f"user_options[{key!r}]" in msg, msg
    if isinstance(value, str):
        assert f"c.SpawndSpawner.{key}_option" in msg and repr(value) in msg, msg
    assert posts(daemon) == []


@pytest.mark.skipif(JH < (5, 3), reason="apply_user_options is JupyterHub 5.3+")
async def test_apply_user_options_sets_names(daemon, world):
    sp = world.spawner(daemon.url, apply_user_options={"course": "default_env"})
    await sp._run_apply_user_options({"course": "gpu"})
    await sp.start()
    assert posts(daemon)[0]["env"] == "gpu"


async def test_refusals_carry_reason_and_status(daemon, world):
    daemon.mode = "forbidden"
    sp = world.spawner(daemon.url)
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "not available to this user's groups" in str(e.value)
    if JH >= (6, 0):
        from jupyterhub.spawner import SpawnException
        assert isinstance(e.value, SpawnException)
        assert e.value.reason == "forbidden" and e.value.status_code == 403
    else:
        assert isinstance(e.value, SpawndError) and e.value.status == 403


async def test_a_server_that_exits_shows_its_log(daemon, world):
    daemon.mode = "exits"
    sp = world.spawner(daemon.url)
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "exited with code 1" in str(e.value) and "No module named 'jupyter_server'" in str(e.value)
    if JH >= (6, 0):
        assert e.value.reason == "server_failed" and e.value.status_code == 502


async def test_unsynced_daemon_is_unknown_not_stopped(daemon, world):
    sp = world.spawner(daemon.url, stop_retries=2)
    await sp.start()
    daemon.mode = "unsynced"
    assert await sp.poll() is None
    with pytest.raises(SpawndError) as e:
        await sp.stop()
    assert e.value.unknown
    daemon.mode = "ok"
    await sp.stop()
    assert await sp.poll() == 0


async def test_rename_refuses_a_running_server(daemon, world):
    sp = world.spawner(daemon.url, name="old")
    await sp.start()
    with pytest.raises(SpawndError) as e:
        await sp.rename("old", "new")
    assert "stop it before renaming" in str(e.value)
    await sp.stop()
    await sp.rename("old", "new")  # nothing to move: homes are per user


async def test_wrong_token_says_so(daemon, world):
    sp = world.spawner(daemon.url, token="wrong-token-wrong-token")
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "token was refused" in str(e.value)


async def test_daemon_down(world):
    down = f"http://127.0.0.1:{free_port()}"
    sp = world.spawner(down, stop_retries=2, stop_retry_for=0)
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "not reachable" in str(e.value)
    # Unknown is not stopped: poll keeps the server, stop reports failure
    # naming the daemon's address.
    assert await sp.poll() is None
    with pytest.raises(SpawndError) as e:
        await sp.stop()
    assert down in str(e.value)


def deletes(daemon):
    return [i for i, c in enumerate(daemon.calls) if c[0] == "DELETE"]


async def test_a_failed_stop_is_retried_until_the_daemon_answers(daemon, world, caplog):
    """JupyterHub forgets a server whose stop failed (the idle culler's, say,
    while spawnd restarts); the container must not run on unseen."""
    caplog.set_level(logging.INFO)
    sp = world.spawner(daemon.url, stop_retries=1, stop_retry_for=60)
    await sp.start()
    daemon.mode = "unsynced"  # spawnd cannot answer for its servers yet
    with pytest.raises(SpawndError):
        await sp.stop()
    assert "spawnd will be asked again" in caplog.text and "home is kept" in caplog.text
    assert daemon.servers, "nothing is deleted while spawnd cannot answer"
    daemon.mode = "ok"
    # The fake daemon forgets the server before it answers, and the spawner
    # logs once the answer arrives: wait for both (a check of the log right
    # after the server went raced the answer).
    for _ in range(100):
        if not daemon.servers and "after spawnd came back" in caplog.text:
            break
        await asyncio.sleep(0.1)
    assert not daemon.servers, "the deferred stop never reached spawnd"
    assert "Stopped" in caplog.text and "after spawnd came back" in caplog.text


async def test_a_new_start_cancels_a_deferred_stop(daemon, world):
    sp = world.spawner(daemon.url, stop_retries=1, stop_retry_for=60)
    await sp.start()
    daemon.mode = "unsynced"
    with pytest.raises(SpawndError):
        await sp.stop()
    daemon.mode = "ok"
    from spawnd_spawner import stops

    before = len(deletes(daemon))
    (task,) = stops._deferred_stops.values()  # the stop being retried
    again = world.spawner(daemon.url, stop_retries=1, stop_retry_for=60)
    await again.start()  # the user clicks start before the retry: it must not stop the new server
    # Not a wait past the retry's delay: the start has cancelled the retry
    # and waited for it to end, so no DELETE can come from it any more.
    assert task.cancelled(), "the new start left the deferred stop running"
    assert not stops._deferred_stops
    assert len(deletes(daemon)) == before, "a deferred stop hit the new server"
    assert daemon.servers


async def test_slow_daemon_times_out(daemon, world):
    daemon.mode = "slow"  # answers after 5 s (with 404: no such server)
    sp = world.spawner(daemon.url, request_timeout=0.5)
    assert await sp.poll() is None, "a poll that timed out is unknown, not stopped (0)"


async def test_server_error_is_reported(daemon, world):
    daemon.mode = "error500"
    sp = world.spawner(daemon.url, stop_retries=1)
    with pytest.raises(Exception) as e:
        await sp.start()
    assert "internal error" in str(e.value)


def test_entry_point_and_version():
    from importlib.metadata import entry_points, version
    import spawnd_spawner
    eps = entry_points(group="jupyterhub.spawners")
    assert any(ep.name == "spawnd" and ep.value == "spawnd_spawner:SpawndSpawner" for ep in eps)
    assert version("spawnd-spawner") == spawnd_spawner.__version__
    assert issubclass(SpawndSpawner, jupyterhub.spawner.Spawner)


async def test_a_start_outlasts_a_daemon_restart(daemon, world, caplog):
    """spawnd killed (and restarted) while the hub waits for a start: the
    start is asked again, not failed; a daemon that stays away fails it at
    start_timeout, naming the daemon."""
    caplog.set_level(logging.INFO)
    daemon.posts_dropped = 2
    sp = world.spawner(daemon.url, start_timeout=30)
    assert await sp.start() == "http://127.0.0.1:40001"
    assert len([c for c in daemon.calls if c[0] == "POST"]) == 3
    assert "asking again" in caplog.text

    daemon.posts_dropped = 1000
    gone = world.spawner(daemon.url, start_timeout=2)
    with pytest.raises(Exception) as e:
        await gone.start()
    assert "not reachable" in str(e.value) or "did not answer" in str(e.value)

    daemon.posts_dropped, daemon.mode = 0, "forbidden"  # a refusal is an answer: never asked again
    before = len(daemon.calls)
    with pytest.raises(Exception):
        await world.spawner(daemon.url, start_timeout=30).start()
    assert len([c for c in daemon.calls[before:] if c[0] == "POST"]) == 1


async def test_get_url_is_spawnds_after_a_hub_restart(daemon, world):
    """A hub that stopped while a start was in flight finds, at its own
    start, a placeholder address in its database (a random port): get_url
    tells it where the server really listens, waiting for one still booting,
    and keeps the hub's record when spawnd has no server."""
    sp = world.spawner(daemon.url, start_timeout=20)
    sp.orm_spawner.server.ip, sp.orm_spawner.server.port = "", 54321
    placeholder = sp.server.url
    key = (USER, "")
    daemon.servers[key] = {"user": USER, "server": "", "state": "pending", "ready": False}

    async def boots():
        await asyncio.sleep(1)
        daemon.servers[key] = {"user": USER, "server": "", "state": "running", "ready": True, "host": "127.0.0.1",
                               "port": 40007, "env": "team", "lock_digest": "sha256:def", "container_id": "c7"}

    booting = asyncio.create_task(boots())
    assert await sp.get_url() == "http://127.0.0.1:40007"
    await booting
    assert sp.get_state()["container_id"] == "c7"
    daemon.servers.clear()
    assert await sp.get_url() == placeholder


async def test_http_clients_close_with_the_last_spawner(daemon, world):
    import gc

    from spawnd_spawner.client import CLIENTS

    one, two = world.spawner(daemon.url, user="ada"), world.spawner(daemon.url, user="bob")
    await one.poll()
    await two.poll()
    _, client = one._client("calls")
    assert two._client("calls")[1] is client, "two spawners of one hub share a client"
    del one
    gc.collect()
    assert not client._closed, "a client another spawner still uses was closed"
    await two.poll()
    del two
    gc.collect()
    assert client._closed, "the client outlived the last spawner that used it"
    assert all(c is not client for c, _, _ in CLIENTS._clients.values())
