"""The protections of docs/SECURITY.md, each switched off in turn.

Each entry names a protection, the exact code that provides it, what to put
there instead (the protection off, the code still compiling), and the test
SECURITY.md cites for it. scripts/prove-security copies the tree (what git
lists), applies one patch at a time to the copy, runs the cited test, and
expects it to FAIL; the tree itself is never touched. A patch whose code is
no longer found is an error: the protection moved, update its entry.
cmd/spawnd's TestProveSecurityPatchesApply checks that every patch still
finds its code, without running anything.
"""

# (protection, file, code, instead, test kind, package or test file, test name);
# code and instead may be tuples: several places switched off together.
PROTECTIONS = [
    ("egress: the IPv6 block rule", "spawnd/egress/egress.go",
     "proto, offset = unix.NFPROTO_IPV6, 24", "proto, offset = unix.NFPROTO_IPV6, 8",
     "go", "./spawnd/egress", "TestRulesHoldForBothFamilies"),
    ("egress: the built-in metadata range 169.254.0.0/16", "spawnd/egress/egress.go",
     '\tnetip.MustParsePrefix("169.254.0.0/16"),\n', "",
     "go", "./spawnd/egress", "TestRulesHoldForBothFamilies"),
    ("egress: the daemon applies the fence", "spawnd/egress/egress.go",
     "\tfor _, p := range r.Block {\n\t\tc.AddRule(", "\tfor _, p := range r.Block[:0] {\n\t\tc.AddRule(",
     "go", "./daemon", "TestEgressFence"),
    ("capabilities dropped", "spawnd/docker/docker.go",
     'CapDrop:     []string{"ALL"},', "CapDrop:     nil,",
     "go", "./daemon", "TestHardeningFromInside"),
    ("no-new-privileges", "spawnd/docker/docker.go",
     'SecurityOpt: []string{"no-new-privileges:true"},', "SecurityOpt: nil,",
     "go", "./daemon", "TestHardeningFromInside"),
    ("pids limit", "spawnd/docker/docker.go",
     "pids := s.PidsLimit", "pids := int64(-1) // unlimited",
     "go", "./daemon", "TestHardeningFromInside"),
    ("CIS 5.3 / 5.25 as inspected", "spawnd/docker/docker.go",
     'SecurityOpt: []string{"no-new-privileges:true"},', "SecurityOpt: nil,",
     "go", "./daemon", "TestCISDockerSection5"),
    ("names only: unknown fields refused", "api/server/server.go",
     "\tdec.DisallowUnknownFields()\n", "",
     "go", "./api/server", "TestBadStartBodies"),
    ("request bodies bounded (1 MiB)", "api/server/server.go",
     "r.Body = http.MaxBytesReader(sw, r.Body, MaxBodyBytes)", "_ = MaxBodyBytes",
     "go", "./api/server", "TestBadStartBodies"),
    ("the API token checked", "api/server/server.go",
     "if subtle.ConstantTimeCompare(sum[:], h.tokenHash[:]) == 1 {", "if subtle.ConstantTimeCompare(sum[:], sum[:]) == 1 {",
     "go", "./api/server", "TestEveryEndpointButHealthNeedsTheToken"),
    ("a home that is a symlink named as such", "spawnd/homes.go",
     "\t\tif fi.Mode()&fs.ModeSymlink != 0 {\n\t\t\treturn \"\", &Error{Kind: ErrConflict, Msg: \"the home of this user is a symlink",
     "\t\tif false {\n\t\t\treturn \"\", &Error{Kind: ErrConflict, Msg: \"the home of this user is a symlink",
     "go", "./spawnd", "TestPlantedSymlinks"),
    ("a home that is a symlink refused (both checks off: the symlink's and not-a-directory)", "spawnd/homes.go",
     ("\t\tif fi.Mode()&fs.ModeSymlink != 0 {", "\t\tif !fi.IsDir() {"), ("\t\tif _ = fi; false {", "\t\tif false {"),
     "go", "./spawnd", "TestPlantedSymlinks"),
    ("homes_root owner and mode checked", "spawnd/homes.go",
     "\tif err := CheckHomesRoot(path, fi); err != nil {", "\tif err := CheckHomesRoot(path, fi); false && err != nil {",
     "go", "./daemon", "TestHomeCannotBeCreated"),
    ("secrets redacted from server logs", "spawnd/logs.go",
     '\t\tout = strings.ReplaceAll(out, s, "[redacted]")\n', "\t\t_ = s\n",
     "go", "./daemon", "TestLogsRedacted"),
    ("swarm home move: the copy takes the name only on COMMIT", "spawnd/swarm/helpers/receive.py",
     "if conn.makefile('rb').readline() != b'COMMIT\\n':\n    give_up(33)\n", "conn.makefile('rb').readline()\n",
     "go", "./spawnd/swarm", "TestMoveRefusesACopyCorruptedInFlight"),
    ("user network: inter-container traffic off (icc)", "spawnd/docker/docker.go",
     ('Options: map[string]string{"com.docker.network.bridge.enable_icc": strconv.FormatBool(n.ICC)},', "\tif icc != n.ICC {"),
     ('Options: map[string]string{"com.docker.network.bridge.enable_icc": strconv.FormatBool(true)},', "\tif false && icc != n.ICC {"),
     "go", "./daemon", "TestHardeningFromInside"),
    ("home_owner range: each person a uid of their own", "spawnd/owners.go",
     "\t\tif !used[id] {\n\t\t\treturn id, nil", "\t\tif true {\n\t\t\treturn id, nil",
     "go", "./daemon", "TestHomesBelongToTheirPeople"),
    ("idmapped homes: the person's uid shown as the image's user", "spawnd/slots.go",
     "m := idmap.Mapping{HostUID: home.Owner.UID, HostGID: home.Owner.GID, InUID: uid, InGID: gid}",
     "m := idmap.Mapping{HostUID: home.Owner.UID, HostGID: home.Owner.GID, InUID: home.Owner.UID, InGID: home.Owner.GID}",
     "go", "./daemon", "TestHomesBelongToTheirPeople"),
    ("home_owner range: a home of another uid refused until migrated", "spawnd/owners.go",
     "\tif !o.uids.Contains(int(st.Uid)) {\n\t\treturn 0, &Error{", "\tif false {\n\t\treturn 0, &Error{",
     "go", "./daemon", "TestMigrateHomeToItsPerson"),
    ("home_owner system: a home owned by someone else refused", "spawnd/owners.go",
     "\tif st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != a.uid {", "\tif st := fi.Sys().(*syscall.Stat_t); false && int(st.Uid) != a.uid {",
     "go", "./spawnd", "TestSystemHomesAreTheAccountsOwn"),
    ("warm servers: whose a taken server is, read back from its claim", "spawnd/pool.go",
     "\t\tm.pool.claims[c.Container] = c\n\t}\n\treturn nil", "\t\t_ = c\n\t}\n\treturn nil",
     "go", "./e2e", "TestWarmServersSurviveDaemonKill"),
    ("warm servers: a taken server whose claim is lost is never kept warm", "spawnd/pool.go",
     "if mounted, err := idmap.Mounted(m.slots.path(slot)); err != nil || mounted {",
     "if mounted, err := idmap.Mounted(m.slots.path(slot)); false && (err != nil || mounted) {",
     "go", "./e2e", "TestWarmServersSurviveDaemonKill"),
    ("warm servers: a server being taken is never back in the pool before its claim", "spawnd/pool.go",
     "\tpl.taking[best.id] = true\n", "\n",
     "go", "./spawnd", "TestTakeWarmMatchesAndRaces"),
    ("warm servers: the home slot unreadable until a start takes the server", "spawnd/pool.go",
     "\tif err := os.Mkdir(path, 0); err != nil {\n\t\treturn false, fmt.Errorf(\"making the slot: %w\", err)",
     "\tif err := os.Mkdir(path, 0o755); err != nil {\n\t\treturn false, fmt.Errorf(\"making the slot: %w\", err)",
     "go", "./e2e", "TestWarmClassOnJupyterHub5"),
    ("hub: the shared password only from loopback", "deploy/jupyterhub_config.py",
     "            if not all(loopback(h) for h in hops):", "            if False:",
     "pytest", "hub/tests/test_shipped_config.py", "test_the_shared_password_never_works_from_another_machine"),
    ("hub: the dummy login refused behind an HTTPS front", "deploy/jupyterhub_config.py",
     "    if FRONT:\n        refuse(f\"the shared-password login would sit behind", "    if False:\n        refuse(f\"the shared-password login would sit behind",
     "pytest", "hub/tests/test_shipped_config.py", "test_unsafe_set_ups_refuse_to_start and front"),
    ("hub: the idle-culler ends with the hub", "deploy/jupyterhub_config.py",
     '"command": [sys.executable, "-c", culler_launcher, str(os.getpid()),', '"command": [sys.executable, "-m", "jupyterhub_idle_culler",',
     "pytest", "hub/tests/test_shipped_config.py", "test_the_idle_culler_ends_with_a_killed_hub"),
]


def main():
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if sys.argv[1:] == ["--check"]:
        # Without running anything: every patch finds its code once, and
        # every test is one SECURITY.md cites.
        with open(os.path.join(root, "docs", "SECURITY.md")) as f:
            doc = f.read()
        problems = []
        for name, path, code, _, _, _, test in PROTECTIONS:
            with open(os.path.join(root, path)) as f:
                text = f.read()
            for c in (code if isinstance(code, tuple) else (code,)):
                n = text.count(c)
                if n != 1:
                    problems.append(f"{name}: its code {c.strip()[:40]!r} is found {n} times in {path} (want once)")
            if "`" + test.split(" and ")[0] + "`" not in doc:
                problems.append(f"{name}: docs/SECURITY.md does not cite {test.split(' and ')[0]}")
        for p in problems:
            print("prove-security:", p, file=sys.stderr)
        return 1 if problems else 0
    only = sys.argv[1:]
    python = os.environ.get("SPAWND_PROVE_PYTHON", "/var/lib/spawnd-test/hubs/jh5/bin/python")
    listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    work = tempfile.mkdtemp(prefix="spawnd-prove-")
    try:
        for rel in listed:
            if not rel:
                continue
            src, dst = os.path.join(root, rel.decode()), os.path.join(work, rel.decode())
            if not os.path.lexists(src):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        rows, bad = [], 0
        for name, path, code, instead, kind, where, test in PROTECTIONS:
            if only and not any(o in name for o in only):
                continue
            target = os.path.join(work, path)
            with open(target) as f:
                original = f.read()
            codes = code if isinstance(code, tuple) else (code,)
            insteads = instead if isinstance(instead, tuple) else (instead,)
            patched = original
            for c, i in zip(codes, insteads):
                if patched.count(c) != 1:
                    print(f"prove-security: {name}: the code {c.strip()[:40]!r} is not found once in {path}; the protection moved, "
                          "update scripts/prove_security.py", file=sys.stderr)
                    return 2
                patched = patched.replace(c, i)
            with open(target, "w") as f:
                f.write(patched)
            if kind == "go":
                cmd = ["go", "test", "-count=1", "-timeout", "10m", "-run", f"^{test}$", where]
                cwd = work
            else:
                cmd = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.basename(where), "-k", test]
                cwd = os.path.join(work, os.path.dirname(where))
            print(f"prove-security: {name}: off; running {test}", file=sys.stderr, flush=True)
            try:
                r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
                out, rc = r.stdout + r.stderr, r.returncode
            except subprocess.TimeoutExpired:
                out, rc = "timed out", -1
            finally:
                with open(target, "w") as f:
                    f.write(original)
            # A build failure proves nothing: the patch must leave code that compiles.
            if kind == "go" and ("[build failed]" in out or "[setup failed]" in out):
                print(out[-3000:], file=sys.stderr)
                print(f"prove-security: {name}: the patched code does not build; fix the entry", file=sys.stderr)
                return 2
            failed = rc != 0
            if not failed:
                bad += 1
                print(out[-2000:], file=sys.stderr)
            first = next((l.strip() for l in out.splitlines()
                          if ("_test.go:" in l or "AssertionError" in l or l.startswith("E ")) and l.strip()), "")
            rows.append((name, test, "yes" if failed else "**NO**", first[:160]))
        print("| protection switched off | cited test | fails without it | first failure |")
        print("| --- | --- | --- | --- |")
        for name, test, failed, first in rows:
            print(f"| {name} | `{test.split(' and ')[0]}` | {failed} | {first.replace('|', '/')} |")
        if bad:
            print(f"prove-security: {bad} test(s) still passed with their protection off", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
