"""spawnd's conda helper: solves and installs conda packages with py-rattler.

spawnd runs it with a Python that has py-rattler (scripts/rattler-venv), one
JSON request on stdin and one JSON answer on stdout. It is embedded in the
spawnd binary and never installed on its own.

  {"op": "solve", "channels": [...], "specs": [...], "platform": "linux-64",
   "virtual": [{"name": "__glibc", "version": "2.36", "build": "0"}, ...],
   "cache_dir": "..."}
    -> {"packages": [{name, version, build, url, channel, subdir, file,
                      sha256, md5, size}, ...]}

  {"op": "install", "prefix": "/staging/dir", "target": "/opt/conda",
   "cache_dir": "...", "packages": [{"path": "/cache/file", "url": ...,
                                     "channel": ..., "file": ...}, ...]}
    -> {"installed": N}

Installing reads only the local package files (no network): each file was
checked against the lock's SHA-256 before. Files that name their prefix get
"target" written in (alternative_target_prefix), so the tree staged on the
host works once copied to "target" in the image. Link scripts never run (they
would run on the host). conda-meta records are rewritten to say what the lock
says (URL, channel) instead of host paths, so the tree is the same on every
machine.

Errors are one JSON object {"error": "..."} on stdout and exit status 1.
"""

import asyncio
import datetime
import json
import os
import sys


def fail(msg):
    sys.stdout.write(json.dumps({"error": msg}) + "\n")
    sys.stdout.flush()
    # os._exit: py-rattler's runtime has been seen to abort while the
    # interpreter shuts down; the answer is already written.
    os._exit(1)


try:
    import rattler
except ImportError as e:  # pragma: no cover - reported to the user by spawnd
    fail("this Python has no py-rattler (%s): run scripts/rattler-venv, or set SPAWND_CONDA_PYTHON" % e)


def hexof(b):
    if b is None:
        return ""
    return b.hex() if isinstance(b, (bytes, bytearray)) else str(b)


async def solve(req):
    virtual = [
        rattler.GenericVirtualPackage(rattler.PackageName(v["name"]), rattler.Version(v["version"]), rattler.BuildString(v["build"]))
        for v in req.get("virtual", [])
    ]
    # The system's certificates (and SSL_CERT_FILE's, which spawnd sets when
    # it was given extra CAs), not only the ones py-rattler was built with:
    # a company's TLS-intercepting proxy is trusted there.
    client = rattler.Client.from_config(rattler.Config.from_toml('tls-root-certs = "system"'))
    gateway = rattler.Gateway(cache_dir=req.get("cache_dir") or None, client=client)
    records = await rattler.solve(
        sources=req["channels"],
        specs=req["specs"],
        gateway=gateway,
        platforms=[req["platform"], "noarch"],
        virtual_packages=virtual,
        timeout=datetime.timedelta(seconds=req.get("timeout", 300)),
    )
    out = []
    for r in records:
        out.append({
            "name": r.name.normalized,
            "version": str(r.version),
            "build": str(r.build),
            "url": r.url,
            "channel": str(r.channel or ""),
            "subdir": str(r.subdir),
            "file": r.file_name,
            "sha256": hexof(r.sha256),
            "md5": hexof(r.md5),
            "size": r.size or 0,
        })
    out.sort(key=lambda p: p["name"])
    return {"packages": out}


async def install(req):
    prefix = req["prefix"]
    records = []
    by_file = {}
    for p in req["packages"]:
        rec = await rattler.RepoDataRecord.from_package_archive(p["path"])
        records.append(rec)
        by_file[os.path.basename(p["path"])] = p
    await rattler.install(
        records,
        target_prefix=prefix,
        cache_dir=req["cache_dir"],
        execute_link_scripts=False,
        show_progress=False,
        alternative_target_prefix=req["target"],
    )
    # The records name host paths (the package cache, the staging dir) and
    # the local file's URL: write what the lock says instead.
    meta = os.path.join(prefix, "conda-meta")
    for name in sorted(os.listdir(meta)):
        path = os.path.join(meta, name)
        if not name.endswith(".json"):
            continue
        with open(path) as f:
            rec = json.load(f)
        locked = None
        for p in req["packages"]:
            if os.path.basename(rec.get("url", "")) == os.path.basename(p["path"]):
                locked = p
        if locked is not None:
            rec["url"] = locked["url"]
            rec["channel"] = locked.get("channel") or None
            rec["fn"] = locked["file"]
        for k in ("extracted_package_dir", "package_tarball_full_path"):
            rec.pop(k, None)
        if isinstance(rec.get("link"), dict):
            rec["link"].pop("source", None)
        with open(path, "w") as f:
            json.dump(rec, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(path, 0o644)
    # conda knows an environment by conda-meta/history, which is otherwise a
    # log with the install's times: keep it, empty. rattler's CACHEDIR.TAG
    # is for its caches and does not belong in an image.
    with open(os.path.join(meta, "history"), "w"):
        pass
    os.chmod(os.path.join(meta, "history"), 0o644)
    tag = os.path.join(prefix, "CACHEDIR.TAG")
    if os.path.exists(tag):
        os.remove(tag)
    return {"installed": len(records)}


def main():
    try:
        req = json.load(sys.stdin)
        op = {"solve": solve, "install": install}.get(req.get("op"))
        if op is None:
            fail("unknown op %r" % req.get("op"))
        ans = asyncio.run(op(req))
    except Exception as e:  # noqa: BLE001 - every failure is reported to spawnd
        fail("%s: %s" % (type(e).__name__, e))
    sys.stdout.write(json.dumps(ans) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
