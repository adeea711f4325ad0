"""spawnd's warm launcher (issue #28): a single-user server that boots
before anyone asks, then becomes one person's.

argv: HANDOFF_DIR SCRIPT CMD [ARGS...] (or --cost SCRIPT CMD...: print
what the imports cost as JSON, and exit). It resolves CMD to its console
script's entry point, imports it and the server extensions the image
enables (most of a server's boot is importing), writes HANDOFF_DIR/ready,
and waits. spawnd, when a start takes this server, mounts the person's
home on the (until then empty, unreadable) home directory and writes
HANDOFF_DIR/start: the server's environment and command line as JSON,
readable by this uid only. The launcher reads and removes it, sets the
environment, re-reads what depends on the home (the user site-packages,
the working directory; ~/.jupyter is read by the app as it starts), and
calls the entry point, as the console script would have. Nothing here
prints the environment.
"""

import importlib
import importlib.metadata
import json
import os
import site
import sys
import time

HANDOFF, SCRIPT, CMD = sys.argv[1], sys.argv[2], sys.argv[3:]
EXIT_COLD = 3  # cannot pre-warm: the pool starts this env cold
# Variables the single-user server reads while it is imported: a start
# that sets them differently from this process gets a cold boot instead.
READ_AT_IMPORT = ("JUPYTERHUB_SINGLEUSER_APP", "JUPYTERHUB_SINGLEUSER_EXTENSION", "JUPYTER_PLATFORM_DIRS")


def say(msg):
    print("spawnd-launcher: " + msg, file=sys.stderr, flush=True)


def entry_point(name):
    for ep in importlib.metadata.entry_points(group="console_scripts"):
        if ep.name == name:
            return ep
    return None


def enabled_extensions():
    """The server extensions the image enables (jupyter_server_config.d)."""
    names = []
    dirs = [os.path.join(p, "etc", "jupyter") for p in {sys.prefix, "/usr/local", "/usr"}] + ["/etc/jupyter"]
    for d in dirs:
        conf = os.path.join(d, "jupyter_server_config.d")
        try:
            files = sorted(os.listdir(conf))
        except OSError:
            continue
        for f in files:
            try:
                with open(os.path.join(conf, f)) as fh:
                    exts = json.load(fh).get("ServerApp", {}).get("jpserver_extensions", {})
            except (OSError, ValueError):
                continue
            names += [n for n, on in exts.items() if on]
    return names


# Modules the server imports as it initializes, whoever it serves: the
# jinja2 extensions of its templates, the config migration check,
# JupyterLab's extension manager's HTTP client (httpx imports httpcore as
# a client is made), notebook_shim's look at IPython's paths. Measured in
# the team image: these and the extension points' modules were 0.1 of the
# 0.3 CPU-s a taken server spent before it listened.
AT_INIT = ("jinja2.ext", "jupyter_core.migrate", "httpcore", "IPython")


def try_import(mod):
    try:
        return importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - what fails here loads (or fails) as the server starts
        return None


def warm(ep):
    """Import what a server imports before it knows who it serves: the
    entry point, the server, the extensions the image enables and the
    modules their extension points name (an extension's app is imported
    only as it links), the REST services' handlers (imported as the web
    app is made) and AT_INIT."""
    started = time.process_time()
    main = ep.load()
    for name in ["jupyter_server.serverapp", "jupyterhub.singleuser.extension", *enabled_extensions()]:
        mod = try_import(name)
        points = getattr(mod, "_jupyter_server_extension_points", None) or getattr(mod, "_jupyter_server_extension_paths", None)
        try:
            for point in (points() if points else []):
                try_import(point.get("module", name))
        except Exception:  # noqa: BLE001 - as above
            pass
    serverapp = sys.modules.get("jupyter_server.serverapp")
    for handlers in getattr(serverapp, "JUPYTER_SERVICE_HANDLERS", {}).values():
        for mod in handlers or []:
            try_import(mod)
    for mod in AT_INIT:
        try_import(mod)
    return main, time.process_time() - started


def wait_for_start():
    path = os.path.join(HANDOFF, "start")
    while True:
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            time.sleep(0.02)
            continue
        os.unlink(path)
        return data


def user_site():
    """Put the home's user site-packages where a cold boot has it: before
    the system's site-packages (it was empty at import time)."""
    if not site.ENABLE_USER_SITE:
        return
    usp = site.getusersitepackages()
    if not os.path.isdir(usp) or usp in sys.path:
        return
    before = list(sys.path)
    site.addsitedir(usp)
    added = [p for p in sys.path if p not in before]
    rest = [p for p in sys.path if p not in added]
    at = next((i for i, p in enumerate(rest) if p.endswith(("site-packages", "dist-packages"))), len(rest))
    sys.path[:] = rest[:at] + added + rest[at:]
    importlib.invalidate_caches()


def cost(ep):
    """Import as a warm server does, in a child under -X importtime, and
    print the CPU time and the most expensive top-level packages."""
    import subprocess

    child = subprocess.run(
        [sys.executable, "-X", "importtime", __file__, "--cost-child", SCRIPT, *CMD],
        capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if child.returncode != 0:
        say("the imports failed: " + child.stderr[-500:])
        sys.exit(1)
    per = {}
    for line in child.stderr.splitlines():
        # import time: self [us] | cumulative | imported package
        if not line.startswith("import time:") or "imported package" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        try:
            self_us = int(parts[0])
        except ValueError:
            continue
        top = parts[2].strip().split(".")[0]
        per[top] = per.get(top, 0) + self_us
    top = sorted(per.items(), key=lambda kv: -kv[1])[:5]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    out["top"] = [{"package": k, "seconds": round(v / 1e6, 3)} for k, v in top]
    print(json.dumps(out))


def main():
    if HANDOFF == "--cost-child":
        ep = entry_point(os.path.basename(CMD[0]))
        _, cpu = warm(ep)
        print(json.dumps({"entry_point": ep.value, "import_cpu_seconds": round(cpu, 3)}))
        return
    if not CMD:
        say("cannot pre-warm: no command")
        sys.exit(EXIT_COLD)
    ep = entry_point(os.path.basename(CMD[0]))
    if ep is None:
        why = f"{os.path.basename(CMD[0])} is not a console-script entry point of {sys.executable}"
        if HANDOFF == "--cost":
            print(json.dumps({"cold": why}))
            return
        say("cannot pre-warm: " + why)
        sys.exit(EXIT_COLD)
    if HANDOFF == "--cost":
        cost(ep)
        return
    before = {k: os.environ.get(k) for k in READ_AT_IMPORT}
    entry, cpu = warm(ep)
    with open(os.path.join(HANDOFF, "ready.tmp"), "w") as f:
        json.dump({"import_cpu_seconds": round(cpu, 3), "entry_point": ep.value}, f)
    os.rename(os.path.join(HANDOFF, "ready.tmp"), os.path.join(HANDOFF, "ready"))
    say(f"warm: {ep.value} imported in {cpu:.2f} CPU-s; waiting for a start")
    data = wait_for_start()
    env, argv = data["env"], data["argv"]
    os.environ.clear()
    os.environ.update(env)
    home = env.get("HOME") or "/"
    try:
        os.chdir(data.get("cwd") or home)
    except OSError as e:
        say(f"the home did not arrive: {e}")
        sys.exit(1)
    if any(os.environ.get(k) != v for k, v in before.items()):
        say("the start sets a variable the server reads while it is imported; booting cold")
        os.execvp(argv[0], argv)
    user_site()
    sys.argv = [SCRIPT, *argv[1:]]
    say("taken; starting the server")
    sys.exit(entry())


if __name__ == "__main__":
    main()
