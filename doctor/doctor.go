// Package doctor checks a spawnd installation and says how to fix each
// problem: the engine (reachable, API version, runc against known container
// escapes, live-restore), homes_root (exists, owner, mode, free space), each
// env (lock present and current, image present and matching), GPUs (a
// profile that asks for them on an engine without the NVIDIA runtime), the
// user network (inter-container traffic), homes_root in the systemd unit's
// sandbox, the running hub's JupyterHub against each env's locked one, the
// token, the hub's login (its config read for a login that lets strangers in, and the
// running hub tried with a made-up user and password), and the hub. It only
// reads; it changes nothing (unless a running hub lets the made-up user in).
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Status of one check.
type Status string

// Statuses, from good to bad. Only Fail makes doctor exit non-zero.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Result is one check's outcome.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Engine is what doctor needs of the engine.
type Engine interface {
	Ping(ctx context.Context) error
	Info(ctx context.Context) (backend.Info, error)
	ImageInspect(ctx context.Context, ref string) (backend.ImageInfo, error)
	// CheckNetwork says what is wrong with the user network, if it exists.
	CheckNetwork(ctx context.Context, n backend.NetworkSpec) error
}

// Input is what to check. Engine may be nil when no client could be made.
type Input struct {
	Build     string         // this binary's version and commit (daemon.Build), for bug reports
	Config    *spawnd.Config // nil when the config did not load
	ConfigErr error
	Token     string
	TokenFile string
	Engine    Engine
	EngineErr error
	HubURL    string
	// FrontURL is the hub's address as people reach it (an HTTPS proxy in
	// front, e.g. Caddy), probed like the hub; FrontCA a PEM file of a CA
	// to trust for it besides the system's.
	FrontURL, FrontCA string
	HubConfig         HubConfig
	// MinFreeBytes below which homes_root fails (default 1 GiB); below 5×
	// that it warns.
	MinFreeBytes uint64
	// Unit is spawnd's systemd unit, for the sandbox check ("": the first
	// of Units that exists; none: skipped).
	Unit string
	// Passwd is the host's account database for the home owners check
	// (default /etc/passwd).
	Passwd string
	// BootCost measures what importing an env's server costs every start
	// (images.BootCost through the engine): a line for people, and whether
	// the env cannot be pre-warmed. Nil: not measured.
	BootCost func(ctx context.Context, image string, cmd []string) (summary string, cold bool, err error)
	// ImagePlan is what this spawnd puts in every image it builds
	// (images.PlanVersion): an env image of an older plan warns. "": not
	// checked.
	ImagePlan string
}

// Run runs every check and returns the results in order.
func Run(ctx context.Context, in Input) []Result {
	var rs []Result
	add := func(r Result) { rs = append(rs, r) }
	if in.Build != "" {
		add(Result{"spawnd", OK, in.Build, ""})
	}
	if in.ConfigErr != nil {
		add(Result{"config", Fail, in.ConfigErr.Error(), "fix the key it names (docs/CONFIG.md)"})
	} else if in.Config != nil {
		add(Result{"config", OK, "loaded and valid", ""})
	}
	add(checkToken(in))
	engineOK := false
	var info backend.Info
	for _, r := range checkEngine(ctx, in, &info) {
		add(r)
		if r.Check == "engine" && r.Status == OK {
			engineOK = true
		}
	}
	if in.Config != nil && engineOK {
		add(checkGPUs(in.Config, info))
	}
	if in.Config != nil {
		add(checkHomes(in.Config.HomesRoot, in.MinFreeBytes))
		add(checkHomeOwners(*in.Config, in.Passwd))
		add(checkSandbox(in.Unit, in.Config.HomesRoot))
		add(checkNetwork(ctx, in.Config.Network, in.Engine, engineOK))
		for _, name := range sortedEnvs(in.Config) {
			r := checkEnv(ctx, name, in.Config.Envs[name], in.Engine, engineOK, in.ImagePlan)
			add(r)
			if r.Status != Fail && engineOK && in.BootCost != nil {
				add(checkBootCost(ctx, name, in.Config, in.BootCost))
			}
		}
	}
	add(checkHubConfig(in.HubConfig))
	hub, hubVersion := checkHub(ctx, in.HubURL)
	add(hub)
	if in.Config != nil && hub.Status != Skip {
		add(checkHubVersions(in.Config, hubVersion))
	}
	if hub.Status == OK {
		add(probeLogin(ctx, in.HubURL))
	}
	if in.FrontURL != "" {
		add(probeFront(ctx, in.FrontURL, in.FrontCA))
	}
	return rs
}

// Failed reports whether any result failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func checkToken(in Input) Result {
	if err := api.CheckToken(in.Token); err != nil {
		why, fix, _ := strings.Cut(err.Error(), "; ")
		return Result{"token", Fail, why, fix + " > /etc/spawnd/token; chmod 600 /etc/spawnd/token; set token_file"}
	}
	if in.TokenFile != "" {
		if err := api.CheckTokenFile(in.TokenFile); err != nil {
			why, fix, _ := strings.Cut(err.Error(), "; ")
			return Result{"token", Fail, why, strings.TrimPrefix(fix, "fix it: ")}
		}
	}
	return Result{"token", OK, "set, private", ""}
}

// checkEngine checks the engine and fills info with what it says.
func checkEngine(ctx context.Context, in Input, info *backend.Info) []Result {
	if in.Engine == nil {
		msg := "no engine client"
		if in.EngineErr != nil {
			msg = in.EngineErr.Error()
		}
		return []Result{{"engine", Fail, msg, "check engine.host / DOCKER_HOST"}}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := in.Engine.Ping(pctx); err != nil {
		return []Result{{"engine", Fail, "the Docker engine does not answer: " + oneLine(err),
			"start it: systemctl start docker (or scripts/engine-up); check engine.host / DOCKER_HOST"}}
	}
	got, err := in.Engine.Info(pctx)
	if err != nil {
		return []Result{{"engine", Fail, "asking the engine for its info: " + oneLine(err), "check the engine's log"}}
	}
	*info = got
	rs := []Result{{"engine", OK, fmt.Sprintf("Docker %s, API %s", info.Version, info.APIVersion), ""}}
	rs = append(rs, checkRunc(info.RuncVersion))
	if info.LiveRestore {
		rs = append(rs, Result{"live-restore", OK, "on: user servers keep running while dockerd restarts", ""})
	} else {
		rs = append(rs, Result{"live-restore", Warn, "off: restarting or upgrading dockerd stops every user server",
			`add "live-restore": true to /etc/docker/daemon.json, then systemctl reload docker`})
	}
	return rs
}

// checkGPUs says whether the engine can give servers GPUs, and fails when
// a profile asks for them and it cannot.
func checkGPUs(c *spawnd.Config, info backend.Info) Result {
	var want []string
	for _, name := range slices.Sorted(maps.Keys(c.Profiles)) {
		if g := c.Profiles[name].GPURequest(); g != nil {
			want = append(want, fmt.Sprintf("%s (gpus: %s)", name, g))
		}
	}
	switch {
	case len(want) == 0 && info.GPURuntime:
		return Result{"gpus", OK, "the engine has the NVIDIA runtime; no profile asks for GPUs (profiles.<name>.gpus)", ""}
	case len(want) == 0:
		return Result{"gpus", OK, "no profile asks for GPUs, and the engine has no NVIDIA runtime", ""}
	case info.GPURuntime:
		return Result{"gpus", OK, "the engine has the NVIDIA runtime for " + strings.Join(want, ", "), ""}
	}
	return Result{"gpus", Fail, "profiles " + strings.Join(want, ", ") + " ask for GPUs, and the engine lists no NVIDIA runtime: their starts will fail",
		"install the NVIDIA Container Toolkit on the engine's host and run: nvidia-ctk runtime configure --runtime=docker; systemctl restart docker (or remove gpus from those profiles)"}
}

// advisory is a runc container-escape advisory and the upstream releases that fix it.
type advisory struct {
	ids   string
	fixed []string // the first fixed release of each maintained line, e.g. 1.2.8, 1.3.3
}

var runcAdvisories = []advisory{
	{"CVE-2019-5736", []string{"1.0.0"}},
	{"CVE-2024-21626", []string{"1.1.12"}},
	{"CVE-2025-31133, CVE-2025-52565, CVE-2025-52881", []string{"1.2.8", "1.3.3", "1.4.0"}},
}

var runcVersionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)`)

// checkRunc compares the engine's runc with the releases that fixed known
// container escapes. A distribution build (Debian's "1.1.5+ds1-1+deb12u1")
// may carry the fixes as backports, so it is a warning, not a failure.
func checkRunc(v string) Result {
	m := runcVersionRE.FindStringSubmatch(v)
	if m == nil {
		return Result{"runc", Warn, fmt.Sprintf("cannot read the runc version %q", v), "check runc --version against runc's security advisories"}
	}
	have := [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
	var open []string
	for _, a := range runcAdvisories {
		if !fixedIn(have, a.fixed) {
			open = append(open, a.ids)
		}
	}
	if len(open) == 0 {
		return Result{"runc", OK, "runc " + v + ": no known container escape", ""}
	}
	distro := strings.ContainsAny(v, "+~") && !strings.HasPrefix(v, "v")
	detail := fmt.Sprintf("runc %s predates the upstream fixes for %s", v, strings.Join(open, "; "))
	if distro {
		return Result{"runc", Warn, detail + " (a distribution build; fixes may be backported)",
			"install your distribution's security updates for runc (apt-get update && apt-get install --only-upgrade runc) and check its changelog"}
	}
	return Result{"runc", Fail, detail, "upgrade runc to 1.2.8, 1.3.3 or later (or a Docker release that ships it)"}
}

// fixedIn reports whether version have contains a fix released as the
// versions in fixed (one per maintained minor line, oldest first): it is on
// one of those lines at or past the fix, or on a newer line than all of them.
func fixedIn(have [3]int, fixed []string) bool {
	var last [3]int
	for _, f := range fixed {
		m := runcVersionRE.FindStringSubmatch(f)
		want := [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
		if have[0] == want[0] && have[1] == want[1] {
			return !less(have, want)
		}
		last = want
	}
	return less(last, have)
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func checkHomes(root string, minFree uint64) Result {
	if minFree == 0 {
		minFree = 1 << 30
	}
	fi, err := os.Lstat(root)
	if errors.Is(err, os.ErrNotExist) {
		return Result{"homes_root", Fail, root + " does not exist", fmt.Sprintf("mkdir -p %s && chown root:root %s && chmod 755 %s", root, root, root)}
	}
	if err != nil {
		return Result{"homes_root", Fail, oneLine(err), "check homes_root"}
	}
	if err := spawnd.CheckHomesRoot(root, fi); err != nil {
		why, fix, _ := strings.Cut(err.Error(), "; ")
		return Result{"homes_root", Fail, why, strings.TrimPrefix(fix, "fix it: ")}
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(root, &sfs); err == nil {
		free := sfs.Bavail * uint64(sfs.Bsize)
		switch {
		case free < minFree:
			return Result{"homes_root", Fail, fmt.Sprintf("%s has %s free", root, human(free)), "free space or move homes_root (and back up homes first: docs/INSTALL.md)"}
		case free < 5*minFree:
			return Result{"homes_root", Warn, fmt.Sprintf("%s has only %s free", root, human(free)), "free space before users run out"}
		}
		return Result{"homes_root", OK, fmt.Sprintf("%s: root-owned, mode %#o, %s free", root, fi.Mode().Perm(), human(free)), ""}
	}
	return Result{"homes_root", OK, root, ""}
}

// checkHomeOwners checks who owns the homes under homes_root against
// home_owner. With env, one uid owns every home: a warning when that uid
// is a login account of this host (it can read and change every person's
// files). With range, every home must belong to its own uid of the range
// (a home outside it waits for spawnd home migrate; two homes on one uid
// fail), and the range must be clear of the host's accounts. With system,
// homes left under homes_root from env wait for spawnd home migrate.
func checkHomeOwners(cfg spawnd.Config, passwd string) Result {
	const check = "home owners"
	if passwd == "" {
		passwd = "/etc/passwd"
	}
	root := cfg.HomesRoot
	entries, err := os.ReadDir(root)
	if err != nil {
		return Result{check, Skip, "homes_root unreadable: " + oneLine(err), ""}
	}
	owners := map[uint32][]string{}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue // moved-aside copies and helpers' work are hidden
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			owners[st.Uid] = append(owners[st.Uid], e.Name())
		}
	}
	uids := slices.Sorted(maps.Keys(owners))
	switch cfg.HomeOwner {
	case spawnd.HomeOwnerRange:
		r, err := spawnd.ParseUIDRange(cfg.UIDRange)
		if err != nil {
			return Result{check, Fail, "uid_range: " + oneLine(err), "fix uid_range"}
		}
		if pw, err := os.Open(passwd); err == nil {
			defer pw.Close()
			gr, err := os.Open(filepath.Join(filepath.Dir(passwd), "group"))
			if err == nil {
				defer gr.Close()
				if err := spawnd.CheckUIDRange(r, pw, gr); err != nil {
					return Result{check, Fail, oneLine(err), "choose a uid_range clear of the host's accounts and groups"}
				}
			}
		}
		var stray []string
		for _, u := range uids {
			switch {
			case !r.Contains(int(u)):
				stray = append(stray, owners[u]...)
			case len(owners[u]) > 1:
				return Result{check, Fail, fmt.Sprintf("homes %s share uid %d: each can read and change the others' files", strings.Join(owners[u], ", "), u),
					"give all but one of them to a free uid of uid_range by hand (chown -R), or move them away"}
			}
		}
		if len(stray) > 0 {
			return Result{check, Warn, fmt.Sprintf("%d home(s) in %s belong to a uid outside uid_range %s (made under home_owner env?); their servers are refused until migrated", len(stray), root, r),
				"spawnd home migrate " + strings.Join(stray, " ")}
		}
		return Result{check, OK, fmt.Sprintf("%d home(s), each its own uid of %s", len(entries), r), ""}
	case spawnd.HomeOwnerSystem:
		var left []string
		for _, u := range uids {
			left = append(left, owners[u]...)
		}
		if len(left) > 0 {
			slices.Sort(left)
			return Result{check, Warn, fmt.Sprintf("%d home(s) in %s from home_owner env remain; with home_owner system each person's home is their host account's", len(left), root),
				"move them into the accounts' homes: spawnd home migrate " + strings.Join(left, " ")}
		}
		return Result{check, OK, "home_owner system: every home is its host account's own", ""}
	}
	if len(owners) == 0 {
		return Result{check, OK, "no homes yet", ""}
	}
	accounts := readPasswd(passwd)
	var seen []string
	for _, u := range uids {
		a, ok := accounts[u]
		n := len(owners[u])
		switch {
		case ok && a.login:
			return Result{check, Warn,
				fmt.Sprintf("%d home(s) in %s belong to uid %d, which is the host account %q (shell %s): whoever logs in as %s can read and change every one of them",
					n, root, u, a.name, a.shell, a.name),
				fmt.Sprintf("give each person a uid of their own: home_owner: system (PAM) or range in the config, then spawnd home migrate; or at least give that account no login (usermod -s /usr/sbin/nologin %s)", a.name)}
		case ok:
			seen = append(seen, fmt.Sprintf("%d home(s) of uid %d (%s, no login)", n, u, a.name))
		default:
			seen = append(seen, fmt.Sprintf("%d home(s) of uid %d (no host account)", n, u))
		}
	}
	return Result{check, OK, strings.Join(seen, ", "), ""}
}

// account is one line of the host's passwd file, as checkHomeOwners needs it.
type account struct {
	name, shell string
	login       bool
}

// readPasswd reads a passwd file by uid; an unreadable file is empty.
func readPasswd(path string) map[uint32]account {
	out := map[uint32]account{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 {
			continue
		}
		uid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		shell := f[6]
		login := shell != "" && !strings.HasSuffix(shell, "/nologin") && !strings.HasSuffix(shell, "/false") && shell != "/bin/sync"
		out[uint32(uid)] = account{name: f[0], shell: shell, login: login}
	}
	return out
}

func checkEnv(ctx context.Context, name string, e spawnd.EnvConfig, eng Engine, engineOK bool, plan string) Result {
	check := "env " + name
	image := e.Image
	wantDigest := e.LockDigest
	if e.Spec != "" {
		s, err := envs.Load(e.Spec)
		if err != nil {
			return Result{check, Fail, oneLine(err), "fix the spec"}
		}
		l, err := envs.ReadLock(envs.LockPath(e.Spec))
		if errors.Is(err, os.ErrNotExist) {
			return Result{check, Fail, "no lock next to " + e.Spec, "spawnd build " + e.Spec}
		}
		if err != nil {
			return Result{check, Fail, oneLine(err), "spawnd lock " + e.Spec + " (then spawnd build)"}
		}
		if l.Stale(s) {
			return Result{check, Fail, envs.LockPath(e.Spec) + " is stale: the spec changed since it was locked", "spawnd build " + e.Spec + " --relock"}
		}
		image, wantDigest = l.Tag(), l.Digest
	}
	if !engineOK {
		return Result{check, Skip, "image not checked: the engine is not reachable", ""}
	}
	info, err := eng.ImageInspect(ctx, image)
	if errdefs.IsNotFound(err) {
		fix := "load or pull " + image
		if e.Spec != "" {
			fix = "spawnd build " + e.Spec
		}
		return Result{check, Fail, "image " + image + " is not on the engine", fix}
	}
	if err != nil {
		return Result{check, Fail, oneLine(err), "check the engine"}
	}
	if wantDigest != "" && info.Labels[labels.LockDigest] != "" && info.Labels[labels.LockDigest] != wantDigest {
		return Result{check, Fail, fmt.Sprintf("image %s was built from lock %s, not %s", image, info.Labels[labels.LockDigest], wantDigest), "spawnd build " + e.Spec}
	}
	if plan != "" && e.Spec != "" && info.Labels[labels.LockDigest] != "" && info.Labels[labels.Plan] != plan {
		return Result{check, Warn, fmt.Sprintf("image %s matches its lock but was built by an older spawnd (plan %q, this one's is %q): it lacks what spawnd now puts in every image", image, info.Labels[labels.Plan], plan), "spawnd build " + e.Spec}
	}
	return Result{check, OK, "image " + image + " matches its lock", ""}
}

// checkHub asks the hub's API root, which answers without a token with
// JupyterHub's version.
func checkHub(ctx context.Context, url string) (Result, string) {
	if url == "" {
		return Result{"hub", Skip, "not checked (pass --hub-url http://127.0.0.1:8000)", ""}, ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(url, "/")+"/hub/api/", nil)
	if err != nil {
		return Result{"hub", Fail, oneLine(err), "pass the hub's public URL"}, ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Result{"hub", Fail, "the hub does not answer at " + url + ": " + oneLine(err), "start JupyterHub (systemctl start jupyterhub) or fix --hub-url"}, ""
	}
	defer resp.Body.Close()
	var root struct {
		Version string `json:"version"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&root)
	if resp.StatusCode != 200 {
		return Result{"hub", Fail, fmt.Sprintf("%s/hub/api/ answered %d", url, resp.StatusCode), "check the hub's log"}, ""
	}
	if err != nil || root.Version == "" {
		return Result{"hub", Warn, url + "/hub/api/ answers, but not with JupyterHub's version", "check --hub-url is the hub's public URL"}, ""
	}
	return Result{"hub", OK, "JupyterHub " + root.Version + " answers at " + url, ""}, root.Version
}

func sortedEnvs(c *spawnd.Config) []string {
	return slices.Sorted(maps.Keys(c.Envs))
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func human(n uint64) string {
	const gib = 1 << 30
	if n >= gib {
		return fmt.Sprintf("%.1f GiB", float64(n)/gib)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func checkNetwork(ctx context.Context, n spawnd.NetworkConfig, eng Engine, engineOK bool) Result {
	const check = "network"
	if !engineOK {
		return Result{check, Skip, "not checked (no engine)", ""}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := eng.CheckNetwork(ctx, backend.NetworkSpec{Name: n.Name, ICC: n.ICC}); err != nil {
		msg := oneLine(err)
		why, fix, ok := strings.Cut(msg, "; ")
		if !ok {
			fix = "check the engine"
		}
		return Result{check, Fail, why, strings.TrimSuffix(fix, ": invalid argument")}
	}
	if n.ICC {
		return Result{check, Warn, n.Name + ": inter-container traffic is on (network.icc): a user's server can reach another user's server's port (each still asks for its own token)",
			"set network.icc: false, the default (on Swarm it cannot be off: docs/SWARM.md)"}
	}
	return Result{check, OK, n.Name + ": spawnd's own bridge (or made at start), inter-container traffic off", ""}
}

// checkBootCost reports what importing the env's server costs every start,
// so its authors see what each package costs every student; an env with a
// pool that cannot be pre-warmed warns (its starts boot cold).
func checkBootCost(ctx context.Context, name string, cfg *spawnd.Config, cost func(context.Context, string, []string) (string, bool, error)) Result {
	check := "boot cost " + name
	e := cfg.Envs[name]
	if len(e.Cmd) == 0 {
		return Result{check, Skip, "the env names no command (the image's own runs); not measured", ""}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	summary, cold, err := cost(cctx, e.Image, e.Cmd)
	if err != nil {
		return Result{check, Warn, "not measured: " + oneLine(err), "run the env's image by hand to see why its server does not import"}
	}
	pooled := false
	for _, p := range cfg.Pools {
		pooled = pooled || p.Env == name
	}
	if cold && pooled {
		return Result{check, Warn, summary + "; its pool's starts boot cold", "make the env's command a Python console script (e.g. jupyterhub-singleuser), or remove its pool"}
	}
	return Result{check, OK, summary, ""}
}
