"""Makes the conda packages of a test's local channel and indexes it.

Run by the Python of scripts/rattler-venv --test: conda-package-handling
writes each .conda file, py-rattler's indexer writes repodata.json. stdin:
{"dir": CHANNEL_DIR, "packages": [{"name", "version", "depends": [...],
"files": {"bin/x": {"text": "...", "exec": true}}}]}. A file whose text holds
the prefix placeholder is marked so an installer writes its prefix in.
"""

import asyncio
import hashlib
import json
import os
import sys
import tempfile

import rattler.index
from conda_package_handling import api

PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"


def make(chan, p):
    src = tempfile.mkdtemp()
    paths = []
    for rel, f in sorted(p["files"].items()):
        full = os.path.join(src, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = f["text"].encode()
        with open(full, "wb") as out:
            out.write(data)
        os.chmod(full, 0o755 if f.get("exec") else 0o644)
        e = {"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(), "size_in_bytes": len(data)}
        if PLACEHOLDER in f["text"]:
            e["prefix_placeholder"] = PLACEHOLDER
            e["file_mode"] = "text"
        paths.append(e)
    info = os.path.join(src, "info")
    os.makedirs(info)
    index = {"name": p["name"], "version": p["version"], "build": "0", "build_number": 0, "depends": p.get("depends", []),
             "noarch": "generic", "subdir": "noarch", "license": "MIT", "timestamp": 1700000000000}
    with open(os.path.join(info, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(info, "paths.json"), "w") as f:
        json.dump({"paths": paths, "paths_version": 1}, f)
    with open(os.path.join(info, "files"), "w") as f:
        f.write("".join(rel + "\n" for rel in sorted(p["files"])))
    out = os.path.join(chan, "noarch")
    os.makedirs(out, exist_ok=True)
    api.create(src, None, "%s-%s-0.conda" % (p["name"], p["version"]), out_folder=out)


def main():
    req = json.load(sys.stdin)
    for p in req["packages"]:
        make(req["dir"], p)
    # No shards and no .zst: the test's server answers If-Modified-Since with
    # 304, which py-rattler 0.28's sharded fetch does not accept.
    asyncio.run(rattler.index.index_fs(req["dir"], write_shards=False, write_zst=False))
    sys.stdout.flush()
    os._exit(0)


main()
