// Package server is the daemon side of spawnd's HTTP API: routing, bearer
// token auth, strict request decoding, Server-Sent Events for progress,
// request metrics and the listener (TCP, unix socket, TLS). It is the edge
// where the core's language meets the wire: it converts the core's domain
// types (spawnd.Server, spawnd.ProgressEvent, ...) to api's wire types and
// maps the core's error kinds to HTTP status codes (wire.go). It calls the
// lifecycle core through the small Core interface and owns no state.
package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Core is what the handlers need from the lifecycle core (spawnd.Manager).
type Core interface {
	Start(ctx context.Context, user, server string, req spawnd.StartRequest) (spawnd.Server, error)
	Status(user, server string) (spawnd.Server, error)
	Stop(ctx context.Context, user, server string) (spawnd.Server, error)
	List() ([]spawnd.Server, error)
	Progress(ctx context.Context, user, server string, fn func(spawnd.ProgressEvent) error) error
	DeleteHome(ctx context.Context, user string) error
	MoveHome(ctx context.Context, user, node string) (backend.HomeMove, error)
	MigrateHome(ctx context.Context, user string) (spawnd.HomeMigration, error)
	Drift() ([]spawnd.EnvDrift, error)
	Logs(ctx context.Context, user, server string, tail int) (string, error)
	FollowLogs(ctx context.Context, user, server string, tail int, w io.Writer) error
	Rollout(ctx context.Context, env string, req spawnd.RolloutRequest) (spawnd.RolloutResult, error)
	Offer(groups []string) spawnd.Offer
	Pools() []spawnd.PoolStatus
	EngineUp() bool
}

// Builder runs env builds for the build endpoint; optional.
type Builder interface {
	// BuildEnv builds an env from its spec (relocking if asked), sending
	// progress to fn; the last event has Done set.
	BuildEnv(ctx context.Context, env string, relock bool, fn func(api.BuildEvent)) error
}

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// Options configure a Handler.
type Options struct {
	// Token is the bearer token every endpoint but health requires. Required.
	Token string
	// MetricsToken, when set, is a second token that reads /metrics and
	// nothing else (for Prometheus).
	MetricsToken string
	// Version is reported by the version endpoint.
	Version api.VersionInfo
	// Registry gathers the metrics served on /metrics; request metrics are
	// registered on it too. Nil: a new registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Builder enables POST /v1/envs/{env}/build; nil leaves it off.
	Builder Builder
	// Images, when set, adds each env image's size and build time to
	// GET /v1/envs.
	Images ImageInspector
}

// ImageInspector reads an image on the engine (backend.Builder has it).
type ImageInspector interface {
	ImageInspect(ctx context.Context, ref string) (backend.ImageInfo, error)
}

type handler struct {
	core        Core
	tokenHash   [32]byte
	metricsHash *[32]byte // nil: no metrics token
	opts        Options
	log         *slog.Logger
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
}

// New returns the API's http.Handler.
func New(core Core, opts Options) (http.Handler, error) {
	if err := api.CheckToken(opts.Token); err != nil {
		return nil, err
	}
	if opts.MetricsToken != "" {
		if err := api.CheckToken(opts.MetricsToken); err != nil {
			return nil, fmt.Errorf("the metrics token: %w", err)
		}
		if opts.MetricsToken == opts.Token {
			return nil, errors.New("the metrics token must differ from the API token")
		}
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{
		core:      core,
		tokenHash: sha256.Sum256([]byte(opts.Token)),
		opts:      opts,
		log:       opts.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spawnd_http_requests_total", Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "spawnd_http_request_duration_seconds", Help: "API request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
	}
	if opts.MetricsToken != "" {
		sum := sha256.Sum256([]byte(opts.MetricsToken))
		h.metricsHash = &sum
	}
	if err := opts.Registry.Register(h.requests); err != nil {
		return nil, fmt.Errorf("registering request metrics: %w", err)
	}
	if err := opts.Registry.Register(h.latency); err != nil {
		return nil, fmt.Errorf("registering request metrics: %w", err)
	}

	mux := http.NewServeMux()
	for _, r := range h.routes() {
		mux.Handle(r.pattern, h.wrap(r))
	}
	// Route on the escaped path, so that names holding "/", "." or ".."
	// (valid JupyterHub names, percent-encoded by the client) stay one path
	// segment and are never "cleaned" away; handlers unescape them.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path, r.URL.RawPath = r.URL.EscapedPath(), ""
		mux.ServeHTTP(w, r)
	}), nil
}

type route struct {
	pattern string
	auth    bool
	fn      func(http.ResponseWriter, *http.Request) error
	// metrics: the read-only metrics token is enough.
	metrics bool
	// query are the query parameters the route reads; any other is a 400,
	// as an unknown field of a body is.
	query []string
}

// routes is the API's route table; api/openapi.yaml describes each entry.
func (h *handler) routes() []route {
	rs := []route{
		{pattern: "GET /v1/health", auth: false, fn: h.health},
		{pattern: "GET /v1/version", auth: true, fn: h.version},
		{pattern: "GET /v1/options", auth: true, fn: h.options, query: []string{"group"}},
		{pattern: "GET /v1/servers", auth: true, fn: h.list},
		{pattern: "GET /v1/pools", auth: true, fn: h.pools},
	}
	for _, p := range []string{"/v1/users/{user}/server", "/v1/users/{user}/servers/{server}"} {
		rs = append(rs,
			route{pattern: "POST " + p, auth: true, fn: h.start},
			route{pattern: "GET " + p, auth: true, fn: h.status},
			route{pattern: "DELETE " + p, auth: true, fn: h.stop},
			route{pattern: "GET " + p + "/progress", auth: true, fn: h.progress},
			route{pattern: "GET " + p + "/logs", auth: true, fn: h.logs, query: []string{"tail", "follow"}})
	}
	rs = append(rs,
		route{pattern: "GET /v1/envs", auth: true, fn: h.envs},
		route{pattern: "POST /v1/envs/{env}/build", auth: true, fn: h.build, query: []string{"relock"}},
		route{pattern: "POST /v1/envs/{env}/rollout", auth: true, fn: h.rollout},
		route{pattern: "DELETE /v1/users/{user}/home", auth: true, fn: h.deleteHome, query: []string{"confirm"}},
		route{pattern: "POST /v1/users/{user}/home/move", auth: true, fn: h.moveHome},
		route{pattern: "POST /v1/users/{user}/home/migrate", auth: true, fn: h.migrateHome},
		route{pattern: "GET /metrics", auth: true, fn: h.metrics, metrics: true},
		route{pattern: "/", auth: true, fn: func(http.ResponseWriter, *http.Request) error {
			return api.Errorf(api.CodeNotFound, "no such endpoint; see api/openapi.yaml")
		}})
	return rs
}

func (h *handler) pools(w http.ResponseWriter, r *http.Request) error {
	l := api.PoolList{Pools: []api.Pool{}}
	for _, p := range h.core.Pools() {
		l.Pools = append(l.Pools, api.Pool(p))
	}
	return writeJSON(w, http.StatusOK, l)
}

func (h *handler) metrics(w http.ResponseWriter, r *http.Request) error {
	promhttp.HandlerFor(h.opts.Registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}

// knownQuery refuses a query parameter the route does not read: a request
// says only what the API defines, in its query as in its body.
func knownQuery(r *http.Request, rt route) error {
	if rt.pattern == "/" {
		return nil // the catch-all answers 404 whatever the query
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "the query is not valid percent-encoding")
	}
	for k := range q {
		if !slices.Contains(rt.query, k) {
			if len(k) > 32 {
				k = k[:32] + "…"
			}
			takes := "none"
			if len(rt.query) > 0 {
				takes = strings.Join(rt.query, ", ")
			}
			return api.Errorf(api.CodeInvalid, "unknown query parameter %q; this endpoint takes %s", k, takes)
		}
	}
	return nil
}

// statusWriter records the status code a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// wrap adapts a handler that returns an error: it checks the token, bounds
// the body, maps errors to the JSON error body, and logs and counts each
// request by its route pattern (never its raw path, headers or body).
func (h *handler) wrap(rt route) http.Handler {
	routeName, auth, fn := rt.pattern, rt.auth, rt.fn
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		r.Body = http.MaxBytesReader(sw, r.Body, MaxBodyBytes)
		var err error
		if auth && !h.authorized(r, rt.metrics) {
			sw.Header().Set("WWW-Authenticate", `Bearer realm="spawnd"`)
			err = api.Errorf(api.CodeUnauthorized, "missing or wrong token; send Authorization: Bearer <token>")
		} else if qerr := knownQuery(r, rt); qerr != nil {
			err = qerr
		} else {
			err = fn(sw, r)
		}
		if err != nil {
			h.writeError(sw, r, err)
		}
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		elapsed := time.Since(began)
		h.requests.WithLabelValues(routeName, strconv.Itoa(code)).Inc()
		h.latency.WithLabelValues(routeName).Observe(elapsed.Seconds())
		level := slog.LevelDebug
		if code >= 500 {
			level = slog.LevelWarn
		}
		h.log.Log(r.Context(), level, "request", "method", r.Method, "route", routeName, "status", code, "duration", elapsed)
	})
}

// authorized: the API token, or (on a metrics route) the metrics token.
func (h *handler) authorized(r *http.Request, metricsRoute bool) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	if subtle.ConstantTimeCompare(sum[:], h.tokenHash[:]) == 1 {
		return true
	}
	return metricsRoute && h.metricsHash != nil && subtle.ConstantTimeCompare(sum[:], h.metricsHash[:]) == 1
}

func (h *handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = api.Errorf(api.CodeTooLarge, "the request body is larger than %d bytes", MaxBodyBytes)
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	e := wireError(err)
	if e.Code == api.CodeInternal {
		h.log.Error("internal error", "route", r.Pattern, "err", err)
	}
	writeJSON(w, e.Code.HTTPStatus(), api.ErrorBody{Error: e})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// bodies over MaxBodyBytes are errors that say what to fix. An empty body is
// the zero request.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body) // at most MaxBodyBytes: wrap bounds it
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return api.Errorf(api.CodeInvalid, "reading the body: %v", err)
	}
	if len(body) == 0 {
		return nil // no body: every field at its default
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return api.Errorf(api.CodeInvalid, "the body is only white space; send nothing, or a JSON object")
	}
	if string(bytes.TrimSpace(body)) == "null" {
		return api.Errorf(api.CodeInvalid, "the body is null; send nothing, or a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.As(err, &mbe):
			return err
		case errors.As(err, &se):
			return api.Errorf(api.CodeInvalid, "malformed JSON at byte %d: %v", se.Offset, se)
		case errors.As(err, &te):
			return api.Errorf(api.CodeInvalid, "field %q must be %s, not %s", te.Field, te.Type, te.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := strings.TrimPrefix(err.Error(), "json: unknown field ")
			if len(field) > 66 {
				field = field[:66] + "…"
			}
			return api.Errorf(api.CodeInvalid, "unknown field %s; a start request may only carry env, profile, environment, cmd and groups", field)
		default:
			return api.Errorf(api.CodeInvalid, "malformed JSON: %v", err)
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Errorf(api.CodeInvalid, "unexpected data after the JSON object")
	}
	if _, ok := v.(*api.StartRequest); ok {
		return noNullItems(body)
	}
	return nil
}

// noNullItems refuses a start request whose lists or environment hold a
// null (encoding/json would read it as an empty string, which the request
// did not say).
func noNullItems(body []byte) error {
	var probe struct {
		Cmd, Args, Groups []*string
		Environment       map[string]*string
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil // the strict decode above accepted it; nothing more to say
	}
	for field, list := range map[string][]*string{"cmd": probe.Cmd, "args": probe.Args, "groups": probe.Groups} {
		if slices.Contains(list, nil) {
			return api.Errorf(api.CodeInvalid, "%s holds a null; every item must be a string", field)
		}
	}
	for k, v := range probe.Environment {
		if v == nil {
			if len(k) > 64 {
				k = k[:64] + "…"
			}
			return api.Errorf(api.CodeInvalid, "environment %q is null; every value must be a string", k)
		}
	}
	return nil
}

// names returns the user and server names of a request's path, unescaped.
func names(r *http.Request) (string, string, error) {
	user, err := url.PathUnescape(r.PathValue("user"))
	if err != nil {
		return "", "", api.Errorf(api.CodeInvalid, "the user name in the path is not valid percent-encoding")
	}
	server, err := url.PathUnescape(r.PathValue("server"))
	if err != nil {
		return "", "", api.Errorf(api.CodeInvalid, "the server name in the path is not valid percent-encoding")
	}
	return user, server, nil
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) error {
	if h.core.EngineUp() {
		return writeJSON(w, http.StatusOK, api.Health{Status: "ok", Engine: "up"})
	}
	return writeJSON(w, http.StatusServiceUnavailable, api.Health{Status: "degraded", Engine: "down"})
}

func (h *handler) version(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, h.opts.Version)
}

func (h *handler) options(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, wireOffer(h.core.Offer(r.URL.Query()["group"])))
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) error {
	servers, err := h.core.List()
	if err != nil {
		return err
	}
	out := api.ServerList{Servers: make([]api.Server, len(servers))}
	for i, s := range servers {
		out.Servers[i] = wireServer(s)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (h *handler) start(w http.ResponseWriter, r *http.Request) error {
	var req api.StartRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	user, server, err := names(r)
	if err != nil {
		return err
	}
	srv, err := h.core.Start(r.Context(), user, server, spawnd.StartRequest(req))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wireServer(srv))
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) error {
	user, server, err := names(r)
	if err != nil {
		return err
	}
	srv, err := h.core.Status(user, server)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wireServer(srv))
}

func (h *handler) logs(w http.ResponseWriter, r *http.Request) error {
	user, server, err := names(r)
	if err != nil {
		return err
	}
	tail := 100
	if v := r.URL.Query().Get("tail"); v != "" {
		if tail, err = strconv.Atoi(v); err != nil || tail < 1 {
			return api.Errorf(api.CodeInvalid, "tail: %q is not a positive number of lines", v)
		}
	}
	switch f := r.URL.Query().Get("follow"); f {
	case "1", "true":
		return h.followLogs(w, r, user, server, tail)
	case "", "0", "false":
	default:
		if len(f) > 16 {
			f = f[:16] + "…"
		}
		return api.Errorf(api.CodeInvalid, "follow: %q is not one of 0, 1, false, true", f)
	}
	out, err := h.core.Logs(r.Context(), user, server, tail)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if out != "" {
		_, _ = io.WriteString(w, out+"\n")
	}
	return nil
}

// followLogs streams a server's log as plain text until the client leaves
// or the container ends; the header goes out with the first line, so an
// unknown server is still a 404.
func (h *handler) followLogs(w http.ResponseWriter, r *http.Request, user, server string, tail int) error {
	if _, err := h.core.Status(user, server); err != nil {
		return err
	}
	sw := &streamWriter{w: w}
	err := h.core.FollowLogs(r.Context(), user, server, tail, sw)
	if sw.started {
		return nil // errors after the header can't change the answer
	}
	if err != nil {
		return err
	}
	sw.start()
	return nil
}

// streamWriter sends the header with the first write, and flushes.
type streamWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *streamWriter) start() {
	if !s.started {
		s.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		s.w.Header().Set("X-Content-Type-Options", "nosniff")
		s.w.Header().Set("X-Accel-Buffering", "no")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
}

func (s *streamWriter) Write(p []byte) (int, error) {
	s.start()
	return s.w.Write(p)
}

func (s *streamWriter) Flush() {
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (h *handler) stop(w http.ResponseWriter, r *http.Request) error {
	user, server, err := names(r)
	if err != nil {
		return err
	}
	srv, err := h.core.Stop(r.Context(), user, server)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wireServer(srv))
}

func (h *handler) deleteHome(w http.ResponseWriter, r *http.Request) error {
	user, _, err := names(r)
	if err != nil {
		return err
	}
	if r.URL.Query().Get("confirm") != "yes" {
		return api.Errorf(api.CodeInvalid, "deleting a home destroys the user's files; repeat the call with ?confirm=yes")
	}
	if err := h.core.DeleteHome(r.Context(), user); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *handler) envs(w http.ResponseWriter, r *http.Request) error {
	drift, err := h.core.Drift()
	if err != nil {
		return err
	}
	rep := api.EnvReport{Envs: make([]api.EnvDrift, 0, len(drift))}
	for _, d := range drift {
		e := api.EnvDrift{Env: d.Env, Configured: d.Configured, LockDigest: d.LockDigest, Image: d.Image, Locks: []api.LockServers{}}
		if h.opts.Images != nil && d.Image != "" {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			if info, err := h.opts.Images.ImageInspect(ctx, d.Image); err == nil {
				e.ImageSize, e.Built = info.Size, info.Labels[ocispec.AnnotationCreated]
			}
			cancel()
		}
		for _, l := range d.Locks {
			ls := api.LockServers{LockDigest: l.LockDigest, Current: l.Current, Image: l.Image, Servers: []api.ServerRef{}}
			for _, s := range l.Servers {
				ls.Servers = append(ls.Servers, api.ServerRef{User: s.User, Server: s.Server, State: api.State(s.State)})
			}
			if l.Current {
				e.Current += len(l.Servers)
			} else {
				e.Older += len(l.Servers)
			}
			e.Locks = append(e.Locks, ls)
		}
		rep.Envs = append(rep.Envs, e)
	}
	return writeJSON(w, http.StatusOK, rep)
}

func (h *handler) rollout(w http.ResponseWriter, r *http.Request) error {
	var req api.RolloutRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	env, err := url.PathUnescape(r.PathValue("env"))
	if err != nil {
		return api.Errorf(api.CodeInvalid, "the env name in the path is not valid percent-encoding")
	}
	if req.IdleSeconds < 0 || req.Concurrency < 0 || req.Concurrency > 64 {
		return api.Errorf(api.CodeInvalid, "idle_seconds must be ≥ 0 and concurrency between 0 (default 4) and 64")
	}
	if req.All && len(req.Users) > 0 {
		return api.Errorf(api.CodeInvalid, "all and users do not go together: name users, or move all")
	}
	res, err := h.core.Rollout(r.Context(), env, spawnd.RolloutRequest{All: req.All, Users: req.Users,
		IdleFor: time.Duration(req.IdleSeconds) * time.Second, DryRun: req.DryRun, Concurrency: req.Concurrency})
	if err != nil {
		return err
	}
	out := api.RolloutResult{Env: res.Env, To: res.To, Items: []api.RolloutItem{}}
	for _, it := range res.Items {
		out.Items = append(out.Items, api.RolloutItem{User: it.User, Server: it.Server, From: it.From, Moved: it.Moved, Why: it.Why})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (h *handler) moveHome(w http.ResponseWriter, r *http.Request) error {
	var req api.HomeMoveRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	user, _, err := names(r)
	if err != nil {
		return err
	}
	if req.Node == "" {
		return api.Errorf(api.CodeInvalid, "node: name the node to move the home to (its host name or ID: docker node ls)")
	}
	mv, err := h.core.MoveHome(r.Context(), user, req.Node)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.HomeMove(mv))
}

func (h *handler) migrateHome(w http.ResponseWriter, r *http.Request) error {
	var req struct{} // no options: an empty object or no body
	if err := decode(r, &req); err != nil {
		return err
	}
	user, _, err := names(r)
	if err != nil {
		return err
	}
	mg, err := h.core.MigrateHome(r.Context(), user)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.HomeMigration(mg))
}

// build runs an env build and streams its events as Server-Sent Events.
// Errors before the build begins are JSON answers; the build's own failure
// is the last event (Done, Error).
func (h *handler) build(w http.ResponseWriter, r *http.Request) error {
	if h.opts.Builder == nil {
		return api.Errorf(api.CodeNotFound, "this daemon does not run builds")
	}
	env, err := url.PathUnescape(r.PathValue("env"))
	if err != nil {
		return api.Errorf(api.CodeInvalid, "the env name in the path is not valid percent-encoding")
	}
	relock := r.URL.Query().Get("relock") == "1" || r.URL.Query().Get("relock") == "true"
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	started := false
	send := func(ev api.BuildEvent) {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		b, _ := json.Marshal(ev)
		fmt.Fprintf(w, "data: %s\n\n", b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	err = h.opts.Builder.BuildEnv(r.Context(), env, relock, send)
	mu.Lock()
	defer mu.Unlock()
	if !started {
		return err
	}
	return nil
}

// progress streams the server's progress events as Server-Sent Events: one
// "data: {json}" frame per event, ending after the ready or failed event.
func (h *handler) progress(w http.ResponseWriter, r *http.Request) error {
	user, server, err := names(r)
	if err != nil {
		return err
	}
	if _, err := h.core.Status(user, server); err != nil {
		return err
	}
	flusher, _ := w.(http.Flusher)
	started := false
	err = h.core.Progress(r.Context(), user, server, func(ev spawnd.ProgressEvent) error {
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("X-Accel-Buffering", "no")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		b, err := json.Marshal(api.ProgressEvent{Progress: ev.Progress, Message: ev.Message, Step: string(ev.Step), Ready: ev.Ready, Failed: ev.Failed})
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
	if started {
		return nil // errors after the header can't change the answer
	}
	return err
}
