package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/labels"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// ourContainers counts the containers of a daemon instance.
func ourContainers(t *testing.T, h *harness) []string {
	t.Helper()
	var names []string
	for _, c := range ourContainerList(t, h) {
		names = append(names, c.Names[0])
	}
	return names
}

// ourContainerList lists the instance's containers, running or not.
func ourContainerList(t *testing.T, h *harness) []container.Summary {
	t.Helper()
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+h.cfg.Instance)
	res, err := testenv.Client(h.eng).ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	return res.Items
}

// ourContainerIDs are the IDs of the instance's containers, running or not.
func ourContainerIDs(t *testing.T, h *harness) []string {
	t.Helper()
	var ids []string
	for _, c := range ourContainerList(t, h) {
		ids = append(ids, c.ID)
	}
	return ids
}

// TestHardeningFromInside checks, from inside a running user container,
// what a user can and cannot do.
func TestHardeningFromInside(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()

	// A neighbour whose server must stay out of reach.
	nb, err := h.client.Start(ctx, "neighbour", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nbInspect, err := eng.Inspect(ctx, nb.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := h.client.Options(ctx)
	daemonPort := strings.TrimPrefix(h.addr, "127.0.0.1:")
	// A control: a service on the host bound to the gateway is reachable, so
	// "blocked" below means blocked, not a broken wget.
	ctl, err := net.Listen("tcp", net.JoinHostPort(opts.Network.Gateway, "0"))
	if err != nil {
		t.Fatal(err)
	}
	ctlSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	go ctlSrv.Serve(ctl)
	defer ctlSrv.Close()

	probe := fmt.Sprintf(`
exec 2>/dev/null
out=$HOME/probe.txt
: > $out
echo "uid=$(id -u)" >> $out
grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status >> $out
[ -e /var/run/docker.sock ] && echo "docker_sock=present" >> $out || echo "docker_sock=absent" >> $out
grep -qF %q /proc/self/environ && echo "token_in_env=yes" >> $out || echo "token_in_env=no" >> $out
# (busybox-static's wget crashes on lookups; nc is enough for HTTP/1.0)
get() { printf 'GET %%s HTTP/1.0\r\n\r\n' "$2" | nc -w 2 ${1%%%%:*} ${1##*:} 2>/dev/null | grep -q '^HTTP/'; }
get %s / && echo "control=reachable" >> $out || echo "control=blocked" >> $out
get %s:8888 / && echo "neighbour_ip=reachable" >> $out || echo "neighbour_ip=blocked" >> $out
get %s:%d / && echo "neighbour_published=reachable" >> $out || echo "neighbour_published=blocked" >> $out
get %s:%s /v1/health && echo "daemon_api=reachable" >> $out || echo "daemon_api=blocked" >> $out
# A fork bomb: spawn far more processes than the pids limit allows.
i=0; while [ $i -lt 400 ]; do (sleep 20 &) ; i=$((i+1)); done
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done
echo "procs=$n" >> $out
kill -9 -1
while :; do n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; [ $n -lt 10 ] && break; done
echo done >> $out
exec httpd -f -p 8888 -h $HOME`, cfg.Token, ctl.Addr().String(), nbInspect.IP, opts.Network.Gateway, nb.Port, opts.Network.Gateway, daemonPort)
	s, err := h.client.Start(ctx, "probe", "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", probe}})
	if err != nil {
		t.Fatal(err)
	}
	if s, err = h.client.WaitReady(ctx, "probe", ""); err != nil || !s.Ready {
		t.Fatalf("probe not ready: %+v %v", s, err)
	}
	got := httpGet(t, s, "probe.txt")
	t.Logf("seen from inside:\n%s", got)
	want := []string{
		"uid=1000", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", "CapBnd:\t0000000000000000",
		"NoNewPrivs:\t1", "docker_sock=absent", "token_in_env=no", "control=reachable",
		"neighbour_ip=blocked", "neighbour_published=blocked", "daemon_api=blocked", "done",
	}
	for _, w := range want {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("from inside: want %q in:\n%s", w, got)
		}
	}
	var procs int
	for _, line := range strings.Split(got, "\n") {
		fmt.Sscanf(line, "procs=%d", &procs)
	}
	if procs == 0 || procs > 128 {
		t.Errorf("fork bomb: %d processes inside, pids limit is 128", procs)
	}
}

// TestAbuseChangesNothing sends 10,000 bad requests: without or with a wrong
// token, malformed, or asking for engine options. Nothing is created, and
// every log line is bounded.
func TestAbuseChangesNothing(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	var logs lockedBuffer
	h := startDaemonLogger(t, eng, cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	base := "http://" + h.addr
	long := strings.Repeat("é", 300)
	type req struct {
		method, path, token, body string
	}
	reqs := []req{
		{"POST", "/v1/users/alice/server", "", `{}`},
		{"POST", "/v1/users/alice/server", "wrong-token-wrong-token", `{}`},
		{"POST", "/v1/users/alice/server", cfg.Token + "x", `{}`},
		{"GET", "/v1/servers", "", ""},
		{"GET", "/metrics", "nope", ""},
		{"DELETE", "/v1/users/alice/home?confirm=yes", "", ""},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"image":"busybox"}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"mounts":[{"source":"/","target":"/host"}]}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"privileged":true}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"network_mode":"host"}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"pid_mode":"host"}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"cap_add":["SYS_ADMIN"]}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"devices":["/dev/sda"]}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"env":"team","HostConfig":{"Binds":["/:/host"]}}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"env":`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"env":"nope"}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"profile":"nope"}`},
		{"POST", "/v1/users/" + long + "/server", cfg.Token, `{}`},
		{"POST", "/v1/users/a%00b/server", cfg.Token, `{}`},
		{"POST", "/v1/users/a%0Ab/server", cfg.Token, `{}`},
		{"POST", "/v1/users/alice/servers/a%1Bb", cfg.Token, `{}`},
		{"POST", "/v1/users/alice/server", cfg.Token, `{"environment":{"A-B":"x"}}`},
	}
	const total = 10000
	var sent atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	hc := &http.Client{Timeout: 10 * time.Second}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := sent.Add(1)
				if n > total {
					return
				}
				r := reqs[int(n)%len(reqs)]
				rq, _ := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
				if r.token != "" {
					rq.Header.Set("Authorization", "Bearer "+r.token)
				}
				resp, err := hc.Do(rq)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for code := range codes {
		if code < 400 || code >= 500 {
			t.Errorf("a bad request got %d (%v)", code, codes)
		}
	}
	if n := ourContainers(t, h); len(n) != 0 {
		t.Fatalf("bad requests created containers: %v", n)
	}
	if entries, _ := os.ReadDir(cfg.HomesRoot); len(entries) != 0 {
		t.Fatalf("bad requests created homes: %v", entries)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) > total+20 {
		t.Fatalf("%d log lines for %d requests", len(lines), total)
	}
	for _, l := range lines {
		if len(l) > 600 {
			t.Fatalf("an unbounded log line (%d bytes): %.200s…", len(l), l)
		}
		if strings.Contains(l, cfg.Token) {
			t.Fatal("the token reached the log")
		}
	}
	t.Logf("10,000 bad requests: status codes %v, %d log lines", codes, len(lines))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHostileNames: names that collide after naive escaping, or try to leave
// homes_root, and a symlink planted in homes_root.
func TestHostileNames(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "precious"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	// mallory's home is a symlink an attacker planted, pointing out of homes_root.
	if err := os.Symlink(outside, filepath.Join(cfg.HomesRoot, spawnd.Escape("mallory"))); err != nil {
		t.Fatal(err)
	}
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	_, err := h.client.Start(ctx, "mallory", "", api.StartRequest{})
	if api.ErrorCode(err) != api.CodeConflict {
		t.Fatalf("a symlinked home: %v", err)
	}
	if n := ourContainers(t, h); len(n) != 0 {
		t.Fatalf("a container for a symlinked home: %v", n)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "precious")); string(b) != "keep" {
		t.Fatal("the symlink's target was touched")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Fatalf("spawnd wrote through the symlink: %v", entries)
	}

	names := []string{"a-b", "a-2db", "A-b", "a_b", ".", "..", "../etc", "/etc/passwd", "a/b", "a%2Fb", "x/../../y"}
	for _, n := range names {
		if _, err := h.client.Start(ctx, n, "", api.StartRequest{}); err != nil {
			t.Fatalf("start %q: %v", n, err)
		}
	}
	if got := ourContainers(t, h); len(got) != len(names) {
		t.Fatalf("%d names gave %d containers: %v", len(names), len(got), got)
	}
	entries, _ := os.ReadDir(cfg.HomesRoot)
	dirs := 0
	for _, e := range entries {
		if e.IsDir() {
			dirs++
		}
	}
	if dirs != len(names) {
		t.Fatalf("%d names gave %d home directories", len(names), dirs)
	}
	for _, n := range names {
		p := filepath.Join(cfg.HomesRoot, spawnd.Escape(n))
		if filepath.Dir(p) != cfg.HomesRoot {
			t.Fatalf("home of %q is outside homes_root: %s", n, p)
		}
	}
}

// TestHomeCannotBeCreated: a read-only or full homes_root, or one with the
// wrong owner or mode, gives the hub a clear error that tells nothing of the
// host (the same sentence each time), the daemon's log the cause and its
// fix (per case), and no container and no half-made home.
func TestHomeCannotBeCreated(t *testing.T) {
	eng := testenv.Engine(t)
	for _, tc := range []struct {
		name, opts string
		owner      int
		mode       os.FileMode
		log        string // what the daemon's log must say
	}{
		{name: "read-only", opts: "ro,size=1m", log: "read-only file system"},
		{name: "no inodes left", opts: "size=1m,nr_inodes=1", log: "no space left on device"},
		{name: "wrong owner", owner: 4242, log: "owned by uid 4242, not by root or the daemon's user; fix it: chown root:root"},
		{name: "world-writable", mode: 0o777, log: "writable by group or others (mode 0777); fix it: chmod 755"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, eng)
			if tc.opts != "" {
				if out, err := exec.Command("mount", "-t", "tmpfs", "-o", tc.opts+",mode=755", "tmpfs", cfg.HomesRoot).CombinedOutput(); err != nil {
					ci.Skip(t, "cannot mount a tmpfs here: %v %s", err, out)
				}
				t.Cleanup(func() { _ = exec.Command("umount", cfg.HomesRoot).Run() })
			}
			if tc.owner != 0 {
				if err := os.Chown(cfg.HomesRoot, tc.owner, tc.owner); err != nil {
					ci.Skip(t, "chown needs root: %v", err)
				}
			}
			if tc.mode != 0 {
				_ = os.Chmod(cfg.HomesRoot, tc.mode)
			}
			var logs lockedBuffer
			h := startDaemonLogger(t, eng, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			_, err := h.client.Start(context.Background(), "alice", "", api.StartRequest{})
			const told = "the user's home could not be prepared; an admin can find why in the daemon's log"
			if err == nil || !strings.Contains(err.Error(), told) {
				t.Fatalf("start on a %s homes_root: %v; want %q", tc.name, err, told)
			}
			if strings.Contains(err.Error(), cfg.HomesRoot) {
				t.Errorf("the hub was told the host's path: %v", err)
			}
			if !strings.Contains(strings.ToLower(logs.String()), strings.ToLower(tc.log)) {
				t.Fatalf("the daemon's log does not say %q:\n%s", tc.log, logs.String())
			}
			if n := ourContainers(t, h); len(n) != 0 {
				t.Fatalf("containers: %v", n)
			}
			if entries, _ := os.ReadDir(cfg.HomesRoot); len(entries) != 0 {
				t.Fatalf("half-made homes: %v", entries)
			}
			s, _ := h.client.Status(context.Background(), "alice", "")
			if s.State != api.StateFailed || !strings.Contains(s.Reason, "home") {
				t.Fatalf("status: %+v", s)
			}
		})
	}
}
