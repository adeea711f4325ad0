package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
)

const testToken = "0123456789abcdef0123456789abcdef"

// recordingCore records the calls that reach the core.
type recordingCore struct {
	mu    sync.Mutex
	calls []string
	reqs  []spawnd.StartRequest
}

func (c *recordingCore) record(s string) {
	c.mu.Lock()
	c.calls = append(c.calls, s)
	c.mu.Unlock()
}

// heard is a copy of the calls so far.
func (c *recordingCore) heard() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func (c *recordingCore) Start(_ context.Context, user, server string, req spawnd.StartRequest) (spawnd.Server, error) {
	c.record("start " + user + "|" + server)
	c.mu.Lock()
	c.reqs = append(c.reqs, req)
	c.mu.Unlock()
	return spawnd.Server{User: user, Server: server, State: spawnd.StateRunning}, nil
}

func (c *recordingCore) Status(user, server string) (spawnd.Server, error) {
	c.record("status " + user + "|" + server)
	if user == "ghost" {
		return spawnd.Server{}, &spawnd.Error{Kind: spawnd.ErrNotFound, Msg: "no such server"}
	}
	return spawnd.Server{User: user, Server: server, State: spawnd.StateRunning}, nil
}

func (c *recordingCore) Stop(_ context.Context, user, server string) (spawnd.Server, error) {
	c.record("stop " + user + "|" + server)
	return spawnd.Server{User: user, Server: server, State: spawnd.StateStopped}, nil
}

func (c *recordingCore) List() ([]spawnd.Server, error) { c.record("list"); return nil, nil }

func (c *recordingCore) Progress(_ context.Context, user, server string, fn func(spawnd.ProgressEvent) error) error {
	c.record("progress " + user + "|" + server)
	for _, ev := range []spawnd.ProgressEvent{{Progress: 0, Step: "accepted"}, {Progress: 100, Step: "listening", Ready: true}} {
		if err := fn(ev); err != nil {
			return err
		}
	}
	return nil
}

func (c *recordingCore) DeleteHome(_ context.Context, user string) error {
	c.record("deletehome " + user)
	return nil
}

func (c *recordingCore) MoveHome(_ context.Context, user, node string) (backend.HomeMove, error) {
	c.record("movehome " + user + " " + node)
	return backend.HomeMove{From: "a", To: node}, nil
}

func (c *recordingCore) MigrateHome(_ context.Context, user string) (spawnd.HomeMigration, error) {
	c.record("migratehome " + user)
	return spawnd.HomeMigration{FromUID: 1000, ToUID: 2000000, Files: 3, Migrated: true}, nil
}

func (c *recordingCore) Drift() ([]spawnd.EnvDrift, error) {
	c.record("drift")
	return []spawnd.EnvDrift{{Env: "team", Image: "spawnd/team:new", LockDigest: "sha256:new", Configured: true, Locks: []spawnd.LockServers{
		{LockDigest: "sha256:new", Current: true, Image: "spawnd/team:new", Servers: []spawnd.Server{{User: "ann", State: spawnd.StateRunning}}},
		{LockDigest: "sha256:old", Image: "spawnd/team:old", Servers: []spawnd.Server{{User: "bob", State: spawnd.StateRunning}, {User: "cy", Server: "gpu", State: spawnd.StateRunning}}},
	}}}, nil
}

func (c *recordingCore) Rollout(_ context.Context, env string, req spawnd.RolloutRequest) (spawnd.RolloutResult, error) {
	c.record(fmt.Sprintf("rollout %s all=%v users=%v idle=%s dry=%v", env, req.All, req.Users, req.IdleFor, req.DryRun))
	return spawnd.RolloutResult{Env: env, Items: []spawnd.RolloutItem{{User: "ann", Moved: true, Why: "idle"}}}, nil
}

func (c *recordingCore) Logs(_ context.Context, user, server string, tail int) (string, error) {
	c.record(fmt.Sprintf("logs %s/%s %d", user, server, tail))
	return "line 1\nline 2", nil
}

func (c *recordingCore) FollowLogs(_ context.Context, user, server string, tail int, w io.Writer) error {
	c.record(fmt.Sprintf("follow logs %s/%s %d", user, server, tail))
	_, err := io.WriteString(w, "line 1\n")
	return err
}

func (c *recordingCore) Offer([]string) spawnd.Offer { return spawnd.Offer{} }
func (c *recordingCore) EngineUp() bool              { return true }
func (c *recordingCore) Pools() []spawnd.PoolStatus  { return nil }

func newTestServer(t *testing.T, logs io.Writer) (*httptest.Server, *recordingCore) {
	t.Helper()
	core := &recordingCore{}
	if logs == nil {
		logs = io.Discard
	}
	h, err := New(core, Options{Token: testToken, MetricsToken: testMetricsToken, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, core
}

func do(t *testing.T, ts *httptest.Server, method, path, token string, body io.Reader) (*http.Response, api.ErrorBody) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.URL+path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &eb)
	return resp, eb
}

const testMetricsToken = "metrics-only-token-0123456789"

// TestEveryEndpointButHealthNeedsTheToken goes over the registered route
// table itself (a new route is covered without editing the test): every
// route but health refuses a missing, wrong or near-miss token, and the
// read-only metrics token opens /metrics and nothing else.
func TestEveryEndpointButHealthNeedsTheToken(t *testing.T) {
	var logs bytes.Buffer
	ts, core := newTestServer(t, &logs)
	type endpoint struct{ method, path string }
	var endpoints []endpoint
	fill := strings.NewReplacer("{user}", "alice", "{server}", "x", "{env}", "team")
	for _, r := range (&handler{}).routes() {
		method, path, ok := strings.Cut(r.pattern, " ")
		if !ok {
			method, path = "GET", "/nope" // the catch-all
		}
		if !r.auth {
			if path != "/v1/health" {
				t.Errorf("%s needs no token; only health may", r.pattern)
			}
			continue
		}
		endpoints = append(endpoints, endpoint{method, fill.Replace(path)})
		if !r.metrics {
			// The metrics token is refused everywhere but /metrics.
			if resp, _ := do(t, ts, method, fill.Replace(path), testMetricsToken, nil); resp.StatusCode != 401 {
				t.Errorf("%s with the metrics token: %d, want 401", r.pattern, resp.StatusCode)
			}
		} else if resp, _ := do(t, ts, method, path, testMetricsToken, nil); resp.StatusCode != 200 {
			t.Errorf("%s with the metrics token: %d, want 200", r.pattern, resp.StatusCode)
		}
	}
	if len(endpoints) < 12 {
		t.Fatalf("only %d routes with a token: %v", len(endpoints), endpoints)
	}
	for _, ep := range endpoints {
		for _, tok := range []string{"", "wrong", testToken + "x", strings.ToUpper(testToken), testMetricsToken + "x"} {
			resp, eb := do(t, ts, ep.method, ep.path, tok, nil)
			if resp.StatusCode != 401 || eb.Error == nil || eb.Error.Code != api.CodeUnauthorized {
				t.Errorf("%s %s with token %q: %d %+v", ep.method, ep.path, tok, resp.StatusCode, eb.Error)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: no WWW-Authenticate header", ep.method, ep.path)
			}
		}
	}
	if len(core.calls) != 0 {
		t.Fatalf("unauthenticated requests reached the core: %v", core.calls)
	}
	if resp, _ := do(t, ts, "GET", "/v1/health", "", nil); resp.StatusCode != 200 {
		t.Fatalf("health without token: %d", resp.StatusCode)
	}
	if strings.Contains(logs.String(), testToken) || strings.Contains(logs.String(), "wrong") {
		t.Fatal("a token reached the log")
	}
}

func TestBadStartBodies(t *testing.T) {
	ts, core := newTestServer(t, nil)
	cases := []struct {
		name string
		body string
		code int
		want string
	}{
		{"malformed", `{"env":`, 400, "malformed JSON"},
		{"not an object", `[1,2]`, 400, "must be"},
		{"image", `{"image":"evil/root:latest"}`, 400, "unknown field \"image\""},
		{"mount", `{"mounts":[{"source":"/","target":"/host"}]}`, 400, "unknown field"},
		{"privileged", `{"privileged":true}`, 400, "unknown field"},
		{"host network", `{"network_mode":"host"}`, 400, "unknown field"},
		{"pid", `{"pid_mode":"host"}`, 400, "unknown field"},
		{"cap add", `{"cap_add":["SYS_ADMIN"]}`, 400, "unknown field"},
		{"devices", `{"devices":["/dev/sda"]}`, 400, "unknown field"},
		{"nested host config", `{"env":"team","HostConfig":{"Privileged":true}}`, 400, "unknown field"},
		{"a null in cmd", `{"cmd":["jupyterhub-singleuser",null]}`, 400, "cmd holds a null"},
		{"a null in args", `{"args":[null]}`, 400, "args holds a null"},
		{"a null environment value", `{"environment":{"A":null}}`, 400, "is null"},
		{"only white space", " \n", 400, "white space"},
		{"null", "null", 400, "the body is null"},
		{"trailing data", `{"env":"team"} {"image":"x"}`, 400, "after the JSON"},
		{"wrong type", `{"cmd":"sh"}`, 400, "cmd"},
		{"too large", `{"cmd":["` + strings.Repeat("a", 10<<20) + `"]}`, 413, "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, eb := do(t, ts, "POST", "/v1/users/alice/server", testToken, strings.NewReader(tc.body))
			if resp.StatusCode != tc.code || eb.Error == nil || !strings.Contains(eb.Error.Message, tc.want) {
				t.Fatalf("got %d %+v, want %d with %q", resp.StatusCode, eb.Error, tc.code, tc.want)
			}
		})
	}
	if len(core.calls) != 0 {
		t.Fatalf("bad requests reached the core: %v", core.calls)
	}
}

func TestNamesInPathsAreUnescaped(t *testing.T) {
	ts, core := newTestServer(t, nil)
	cases := []struct{ user, server string }{
		{"alice", ""},
		{"Alice.Smith@example.org", ""},
		{"a/b", "c d"},
		{"ünï", "lab"},
		{"x%2Fy", ""},
		{"..", ""},
		{".", ".."},
		{"../etc", "a/../b"},
		{"a%00b", ""},
	}
	for _, tc := range cases {
		resp, eb := do(t, ts, "POST", api.ServerPath(tc.user, tc.server), testToken, strings.NewReader(`{"env":"team"}`))
		if resp.StatusCode != 200 {
			t.Fatalf("%q/%q: %d %+v", tc.user, tc.server, resp.StatusCode, eb.Error)
		}
		want := "start " + tc.user + "|" + tc.server
		if got := core.calls[len(core.calls)-1]; got != want {
			t.Fatalf("core saw %q, want %q", got, want)
		}
	}
}

func TestProgressIsServerSentEvents(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	req, _ := http.NewRequest("GET", ts.URL+"/v1/users/alice/server/progress", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	want := "data: {\"progress\":0,\"message\":\"\",\"step\":\"accepted\"}\n\ndata: {\"progress\":100,\"message\":\"\",\"step\":\"listening\",\"ready\":true}\n\n"
	if string(b) != want {
		t.Fatalf("stream:\n%s\nwant:\n%s", b, want)
	}
	// A server the core does not know: a JSON 404, not an empty stream.
	resp2, eb := do(t, ts, "GET", "/v1/users/ghost/server/progress", testToken, nil)
	if resp2.StatusCode != 404 || eb.Error.Code != api.CodeNotFound {
		t.Fatalf("unknown server: %d %+v", resp2.StatusCode, eb.Error)
	}
}

func TestDeleteHomeNeedsConfirmation(t *testing.T) {
	ts, core := newTestServer(t, nil)
	resp, eb := do(t, ts, "DELETE", "/v1/users/alice/home", testToken, nil)
	if resp.StatusCode != 400 || !strings.Contains(eb.Error.Message, "confirm=yes") {
		t.Fatalf("got %d %+v", resp.StatusCode, eb.Error)
	}
	if len(core.calls) != 0 {
		t.Fatal("an unconfirmed delete reached the core")
	}
	if resp, _ := do(t, ts, "DELETE", "/v1/users/alice/home?confirm=yes", testToken, nil); resp.StatusCode != 204 {
		t.Fatalf("confirmed delete: %d", resp.StatusCode)
	}
}

func TestMoveHome(t *testing.T) {
	ts, core := newTestServer(t, nil)
	for _, tc := range []struct {
		name, body string
		code       int
		msg        string
	}{
		{"no node", `{}`, 400, "name the node"},
		{"unknown field", `{"node":"b","image":"x"}`, 400, "image"},
		{"no token", "", 401, ""},
		{"moved", `{"node":"node-b"}`, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := testToken
			if tc.code == 401 {
				tok = ""
			}
			resp, eb := do(t, ts, "POST", "/v1/users/alice/home/move", tok, strings.NewReader(tc.body))
			if resp.StatusCode != tc.code || (tc.msg != "" && (eb.Error == nil || !strings.Contains(eb.Error.Message, tc.msg))) {
				t.Fatalf("got %d %+v; want %d with %q", resp.StatusCode, eb.Error, tc.code, tc.msg)
			}
		})
	}
	if want := []string{"movehome alice node-b"}; !slices.Equal(core.calls, want) {
		t.Fatalf("calls that reached the core: %q; want %q", core.calls, want)
	}
}

func TestEnvsReport(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	req, _ := http.NewRequest("GET", ts.URL+"/v1/envs", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep api.EnvReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || resp.StatusCode != 200 || len(rep.Envs) != 1 {
		t.Fatalf("GET /v1/envs: %d %+v %v", resp.StatusCode, rep, err)
	}
	e := rep.Envs[0]
	if e.Current != 1 || e.Older != 2 || len(e.Locks) != 2 || e.Locks[1].Servers[1] != (api.ServerRef{User: "cy", Server: "gpu", State: api.StateRunning}) {
		t.Fatalf("report: %+v", e)
	}
}

func TestShortTokenRefused(t *testing.T) {
	if _, err := New(&recordingCore{}, Options{Token: "short"}); err == nil {
		t.Fatal("a 5-character token was accepted")
	}
}

func FuzzDecodeStartRequest(f *testing.F) {
	for _, s := range []string{`{}`, `{"env":"team","profile":"p","environment":{"A":"b"},"cmd":["x"]}`, `{"image":"x"}`, `[`, ``, `{"env":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		var req api.StartRequest
		err := decode(r, &req)
		if err == nil {
			acceptedOnlyNames(t, body)
			return
		}
		if api.ErrorCode(err) != api.CodeInvalid {
			t.Fatalf("decode error %v has code %s, want invalid", err, api.ErrorCode(err))
		}
	})
}

// startFields are the JSON names of api.StartRequest's fields: all a start
// request may carry (names, never an image, a mount or a Docker option).
var startFields = []string{"env", "profile", "environment", "cmd", "args", "groups"}

// acceptedOnlyNames checks what the decoder accepted, read independently
// of it: nothing (an empty body or JSON null) or one JSON object whose keys
// are all start request fields (encoding/json matches names without regard
// to case, Unicode folding included, hence EqualFold), whose values have
// their field's JSON type, followed by nothing but white space.
func acceptedOnlyNames(t *testing.T, body []byte) {
	t.Helper()
	trimmed := bytes.TrimSpace(body)
	if len(body) == 0 {
		return
	}
	if len(trimmed) == 0 || string(trimmed) == "null" {
		t.Fatalf("decode accepted %q, neither nothing nor a JSON object", body)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &top); err != nil {
		t.Fatalf("decode accepted %q, which is not one JSON object: %v", body, err)
	}
	for k, v := range top {
		field := ""
		for _, f := range startFields {
			if strings.EqualFold(k, f) {
				field = f
			}
		}
		if field == "" {
			t.Fatalf("decode accepted the field %q in %q", k, body)
		}
		val := bytes.TrimSpace(v)
		if string(val) == "null" {
			continue
		}
		var ok bool
		switch field {
		case "env", "profile":
			ok = val[0] == '"'
		case "environment":
			ok = val[0] == '{'
		default:
			ok = val[0] == '['
		}
		if !ok {
			t.Fatalf("decode accepted %s = %s in %q, not its field's JSON type", k, val, body)
		}
	}
}

// TestOpenAPIListsEveryRoute keeps api/openapi.yaml in step with the mux.
func TestOpenAPIListsEveryRoute(t *testing.T) {
	b, err := os.ReadFile("../openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec := string(b)
	for _, r := range (&handler{}).routes() {
		method, path, _ := strings.Cut(r.pattern, " ")
		if path == "" || path == "/" {
			continue
		}
		block := "\n  " + path + ":\n"
		i := strings.Index(spec, block)
		if i < 0 {
			t.Errorf("openapi.yaml lacks the path %s", path)
			continue
		}
		rest := spec[i+len(block)-1:]
		if j := strings.Index(rest, "\n  /"); j >= 0 {
			rest = rest[:j]
		}
		if !strings.Contains(rest, "\n    "+strings.ToLower(method)+":") {
			t.Errorf("openapi.yaml lacks %s %s", method, path)
		}
	}
}

type fakeBuilder struct{}

func (fakeBuilder) BuildEnv(_ context.Context, env string, relock bool, fn func(api.BuildEvent)) error {
	if env == "busy" {
		return api.Errorf(api.CodeConflict, "a build of env %q is already running", env)
	}
	fn(api.BuildEvent{Step: "accepted"})
	fn(api.BuildEvent{Step: "layer 1/2", Cached: true})
	fn(api.BuildEvent{Step: "result", Done: true, Tag: "spawnd/" + env + ":abc", Built: relock})
	return nil
}

func TestBuildEndpoint(t *testing.T) {
	core := &recordingCore{}
	h, err := New(core, Options{Token: testToken, Builder: fakeBuilder{}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	defer ts.Close()
	c, _ := api.NewClient(ts.URL, testToken)
	var evs []api.BuildEvent
	if err := c.BuildEnv(context.Background(), "team", true, func(ev api.BuildEvent) error { evs = append(evs, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || !evs[2].Done || evs[2].Tag != "spawnd/team:abc" || !evs[2].Built {
		t.Fatalf("events: %+v", evs)
	}
	if err := c.BuildEnv(context.Background(), "busy", false, func(api.BuildEvent) error { return nil }); api.ErrorCode(err) != api.CodeConflict {
		t.Fatalf("busy: %v", err)
	}
	// Without a builder the endpoint says so.
	ts2, _ := newTestServer(t, nil)
	c2, _ := api.NewClient(ts2.URL, testToken)
	if err := c2.BuildEnv(context.Background(), "team", false, func(api.BuildEvent) error { return nil }); api.ErrorCode(err) != api.CodeNotFound {
		t.Fatalf("no builder: %v", err)
	}
}

// TestBadLogsQueries: a logs query the spec calls invalid is a 400 that
// names the parameter, and never reaches the core; the valid spellings
// reach it as they should (follow 1/true streams, 0/false does not).
func TestBadLogsQueries(t *testing.T) {
	ts, core := newTestServer(t, nil)
	for _, tc := range []struct {
		query string
		code  int
		want  string // in the body (400) or the core's record (200)
	}{
		{"follow=yes", 400, "follow"},
		{"follow=%F3%AF%B1%A2%01", 400, "follow"},
		{"tail=0", 400, "tail"},
		{"tail=-5", 400, "tail"},
		{"tail=ten", 400, "tail"},
		{"follow=0", 200, "logs ann/ 100"},
		{"follow=false&tail=7", 200, "logs ann/ 7"},
		{"follow=1", 200, "follow logs ann/ 100"},
		{"follow=true&tail=3", 200, "follow logs ann/ 3"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			before := len(core.heard())
			req, _ := http.NewRequest("GET", ts.URL+"/v1/users/ann/server/logs?"+tc.query, nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			calls := core.heard()[before:]
			if resp.StatusCode != tc.code {
				t.Fatalf("%s: %d %s; want %d", tc.query, resp.StatusCode, body, tc.code)
			}
			if tc.code == 400 {
				if !strings.Contains(string(body), tc.want) || len(calls) != 0 {
					t.Fatalf("%s: %s, core called %v; want a 400 naming %s and no call", tc.query, body, calls, tc.want)
				}
				return
			}
			if !slices.Contains(calls, tc.want) {
				t.Fatalf("%s: the core heard %v; want %q", tc.query, calls, tc.want)
			}
		})
	}
}

// TestUnknownQueryRefused: a query parameter a route does not define is a
// 400 naming it, and never reaches the core (a start with an unknown query
// starts nothing); the parameters a route defines still pass.
func TestUnknownQueryRefused(t *testing.T) {
	ts, core := newTestServer(t, nil)
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"POST", "/v1/users/ann/server?image=evil", 400},
		{"POST", "/v1/users/ann/servers/gpu?privileged=1", 400},
		{"GET", "/v1/servers?x=1", 400},
		{"DELETE", "/v1/users/ann/home?confirm=yes&force=1", 400},
		{"GET", "/v1/options?group=physics", 200},
		{"DELETE", "/v1/users/ann/home?confirm=yes", 204},
	} {
		before := len(core.heard())
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		heard := core.heard()[before:]
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s: %d %s; want %d", tc.method, tc.path, resp.StatusCode, body, tc.code)
		}
		if tc.code == 400 && (len(heard) != 0 || !strings.Contains(string(body), "unknown query parameter")) {
			t.Errorf("%s %s: %s, the core heard %v; want a 400 naming the parameter and no call", tc.method, tc.path, body, heard)
		}
	}
}
