package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/spawnd"
)

// checkHubVersions compares the hub's JupyterHub with the jupyterhub each
// env locks: the single-user server and the hub must share a major version
// (JupyterHub's own rule for its REST API and OAuth between them).
func checkHubVersions(c *spawnd.Config, hubVersion string) Result {
	const check = "hub version"
	if hubVersion == "" {
		return Result{check, Skip, "not checked (the hub's version is unknown: pass --hub-url)", ""}
	}
	var ok, bad, unknown []string
	for _, name := range sortedEnvs(c) {
		e := c.Envs[name]
		if e.Spec == "" {
			unknown = append(unknown, name+" (given by image)")
			continue
		}
		l, err := envs.ReadLock(envs.LockPath(e.Spec))
		if err != nil {
			unknown = append(unknown, name+" (no lock)")
			continue
		}
		v := lockedJupyterHub(l)
		switch {
		case v == "":
			unknown = append(unknown, name+" (locks no jupyterhub)")
		case major(v) != major(hubVersion):
			bad = append(bad, fmt.Sprintf("%s locks jupyterhub %s", name, v))
		default:
			ok = append(ok, fmt.Sprintf("%s %s", name, v))
		}
	}
	switch {
	case len(bad) > 0:
		return Result{check, Fail, fmt.Sprintf("the hub runs JupyterHub %s, but %s: a single-user server must share the hub's major version",
			hubVersion, strings.Join(bad, ", ")),
			fmt.Sprintf("pin jupyterhub==%s.* in the env's spec and spawnd build SPEC --relock (or run the hub at the env's major version)", major(hubVersion))}
	case len(unknown) > 0 && len(ok) == 0:
		return Result{check, Warn, "the hub runs JupyterHub " + hubVersion + "; not known for " + strings.Join(unknown, ", "), "lock jupyterhub in the env's spec (pip: [jupyterhub==...])"}
	}
	detail := "the hub runs JupyterHub " + hubVersion + "; envs lock " + strings.Join(ok, ", ")
	if len(unknown) > 0 {
		detail += "; not known for " + strings.Join(unknown, ", ")
	}
	return Result{check, OK, detail, ""}
}

func lockedJupyterHub(l *envs.Lock) string {
	if l.Pip == nil {
		return ""
	}
	for _, p := range l.Pip.Packages {
		if strings.EqualFold(p.Name, "jupyterhub") {
			return p.Version
		}
	}
	return ""
}

func major(v string) string {
	m, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	return m
}

// Units are where spawnd's systemd unit is looked for when none is named:
// spawnd install-systemd's place, then the .deb's.
var Units = []string{"/etc/systemd/system/spawnd.service", "/lib/systemd/system/spawnd.service"}

// checkSandbox reads spawnd's systemd unit and says whether homes_root is
// writable in its sandbox: ProtectSystem=strict makes everything read-only
// but ReadWritePaths and the unit's own directories; ProtectHome hides
// /home, /root and /run/user.
func checkSandbox(unit, homesRoot string) Result {
	const check = "sandbox"
	if unit == "" {
		unit = Units[0]
		for _, u := range Units {
			if _, err := os.Stat(u); err == nil {
				unit = u
				break
			}
		}
	}
	f, err := os.Open(unit)
	if errors.Is(err, os.ErrNotExist) {
		return Result{check, Skip, "no unit at " + unit + " (spawnd does not run under systemd here)", ""}
	}
	if err != nil {
		return Result{check, Fail, oneLine(err), "make " + unit + " readable to doctor"}
	}
	defer f.Close()
	var strict, protectHome bool
	var writable []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		switch k = strings.TrimSpace(k); k {
		case "ProtectSystem":
			strict = strings.TrimSpace(v) == "strict"
		case "ProtectHome":
			protectHome = strings.TrimSpace(v) == "true" || strings.TrimSpace(v) == "yes"
		case "ReadWritePaths":
			for _, p := range strings.Fields(v) {
				writable = append(writable, strings.TrimLeft(p, "-+"))
			}
		case "StateDirectory", "CacheDirectory", "LogsDirectory", "RuntimeDirectory":
			base := map[string]string{"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log", "RuntimeDirectory": "/run"}[k]
			for _, p := range strings.Fields(v) {
				writable = append(writable, filepath.Join(base, p))
			}
		}
	}
	under := func(dir string) bool {
		rel, err := filepath.Rel(dir, homesRoot)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	if protectHome {
		for _, hidden := range []string{"/home", "/root", "/run/user"} {
			if under(hidden) {
				return Result{check, Fail, fmt.Sprintf("homes_root %s is under %s, which ProtectHome=true in %s hides from spawnd", homesRoot, hidden, unit),
					"move homes_root (e.g. /srv/spawnd/homes), or set ProtectHome=false in a drop-in (systemctl edit spawnd)"}
			}
		}
	}
	if !strict {
		return Result{check, OK, unit + ": homes_root " + homesRoot + " is writable (no ProtectSystem=strict)", ""}
	}
	for _, w := range writable {
		if under(w) {
			return Result{check, OK, fmt.Sprintf("%s: homes_root %s is writable in the sandbox (under %s)", unit, homesRoot, w), ""}
		}
	}
	return Result{check, Fail, fmt.Sprintf("%s has ProtectSystem=strict and homes_root %s is under none of its writable paths %v: every start would fail to make a home",
		unit, homesRoot, writable),
		fmt.Sprintf("systemctl edit spawnd, add [Service] ReadWritePaths=%s, then systemctl restart spawnd", homesRoot)}
}
