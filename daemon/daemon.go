// Package daemon wires `spawnd serve`: the daemon's whole configuration, the
// engine client, the lifecycle core, the HTTP API and its listener. A Daemon
// is a struct with Run and Close, so tests start the real daemon in-process.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/api/server"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backends"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// Config is everything `spawnd serve` reads from spawnd.yaml, SPAWND_* env
// and flags.
type Config struct {
	// Listen is the API address: host:port, or unix:///path/to.sock. Default 127.0.0.1:8765.
	Listen string `mapstructure:"listen"`
	// TokenFile holds the API bearer token (one line). SPAWND_TOKEN may give it instead.
	TokenFile string `mapstructure:"token_file"`
	// Token is the API bearer token itself; prefer token_file or SPAWND_TOKEN.
	Token string `mapstructure:"token"`
	// MetricsTokenFile holds a second token that reads /metrics and nothing
	// else, for Prometheus: a scraper never holds the token that starts
	// containers. Optional; the API token reads /metrics too.
	MetricsTokenFile string `mapstructure:"metrics_token_file"`
	// MetricsToken is that token itself; prefer metrics_token_file.
	MetricsToken string `mapstructure:"metrics_token"`
	// TLS serves the API over HTTPS when both files are set.
	TLS TLSConfig `mapstructure:"tls"`
	// Engine is the backend, and the engine (or swarm manager) it drives.
	Engine EngineConfig `mapstructure:"engine"`
	// Hub is how the daemon reads the hub's activity, so that spawnd
	// rollout moves only idle servers. Optional.
	Hub HubConfig `mapstructure:"hub"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `mapstructure:"log_level"`
	// LogFormat is text or json. Default text.
	LogFormat string `mapstructure:"log_format"`

	spawnd.Config `mapstructure:",squash"`
}

// TLSConfig names a certificate and key in PEM files.
type TLSConfig struct {
	// CertFile is the server certificate (PEM, with any intermediates).
	CertFile string `mapstructure:"cert_file"`
	// KeyFile is the certificate's private key (PEM).
	KeyFile string `mapstructure:"key_file"`
}

// HubConfig is how the daemon reads JupyterHub's REST API.
type HubConfig struct {
	// URL is the hub's API, e.g. http://127.0.0.1:8081/hub/api.
	URL string `mapstructure:"url"`
	// TokenFile holds a hub API token with the scopes list:users,
	// read:users:activity and read:servers and no others (a hub service's;
	// docs/ENVS.md shows the hub config).
	TokenFile string `mapstructure:"token_file"`
	// Token is that token itself; prefer token_file.
	Token string `mapstructure:"token"`
}

func (h *HubConfig) validate() error {
	if h.URL == "" {
		if h.TokenFile != "" || h.Token != "" {
			return errors.New("hub: a token without hub.url; name the hub's API (e.g. http://127.0.0.1:8081/hub/api)")
		}
		return nil
	}
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("hub.url: %q is not an http(s) URL of the hub's API (e.g. http://127.0.0.1:8081/hub/api)", h.URL)
	}
	if err := fillSecret("hub.token_file", &h.Token, h.TokenFile); err != nil {
		return err
	}
	if h.Token == "" {
		return errors.New("hub.token_file: hub.url needs a hub API token (scopes list:users, read:users:activity, read:servers)")
	}
	return nil
}

// EngineConfig says which backend runs the containers, and where its
// engine is (spawnd/backends, the one place that picks a backend).
type EngineConfig = backends.EngineConfig

// validateSwarm checks what one host allows and a swarm does not.
func (c *Config) validateSwarm() error {
	if c.Engine.Backend != "swarm" {
		for _, name := range slices.Sorted(maps.Keys(c.Profiles)) {
			if len(c.Profiles[name].Placement) > 0 {
				return fmt.Errorf("profiles.%s.placement: one engine has no nodes to place on; placement needs engine.backend: swarm", name)
			}
		}
		return nil
	}
	if c.Network.Egress.On() {
		return errors.New("network.egress: the fence is nftables on the daemon's own host, and swarm servers run on other nodes; " +
			"set network.egress.enabled: false and fence the nodes' user traffic there (docs/SWARM.md)")
	}
	if !c.Network.ICC {
		return errors.New("network.icc: a swarm overlay network cannot block traffic between the servers on it; " +
			"set network.icc: true to accept that (each server still requires its own token; docs/SWARM.md)")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Profiles)) {
		if c.Profiles[name].GPURequest() != nil {
			return fmt.Errorf("profiles.%s.gpus: %w (docs/SWARM.md)", name, backends.ErrNoGPUs)
		}
	}
	return nil
}

// Validate fills defaults, reads the token files, and checks everything,
// naming the key of the first mistake.
func (c *Config) Validate() error {
	c.defaults()
	if err := c.Engine.Validate(); err != nil {
		return err
	}
	if err := c.Hub.validate(); err != nil {
		return err
	}
	if o := c.Config.HomeOwner; o != "" && o != spawnd.HomeOwnerEnv && c.Engine.Backend == "swarm" {
		return fmt.Errorf("home_owner: %s gives each person's home its owner through an idmapped mount on the daemon's host; on Swarm the servers run on other nodes (use home_owner: env with engine.backend: swarm)", o)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("tls: set both tls.cert_file and tls.key_file, or neither")
	}
	if err := fillSecret("token_file", &c.Token, c.TokenFile); err != nil {
		return err
	}
	if c.Token == "" {
		return errors.New("token_file: no API token; set token_file (or SPAWND_TOKEN) to a secret of at least 16 characters, e.g. from: openssl rand -hex 32")
	}
	if err := api.CheckToken(c.Token); err != nil {
		return fmt.Errorf("token_file: %w", err)
	}
	if c.MetricsToken == "" && c.MetricsTokenFile != "" {
		if err := fillSecret("metrics_token_file", &c.MetricsToken, c.MetricsTokenFile); err != nil {
			return err
		}
		if c.MetricsToken == "" {
			return fmt.Errorf("metrics_token_file: %s is empty", c.MetricsTokenFile)
		}
	}
	if c.MetricsToken != "" {
		if err := api.CheckToken(c.MetricsToken); err != nil {
			return fmt.Errorf("metrics_token_file: %w", err)
		}
	}
	if c.MetricsToken != "" && c.MetricsToken == c.Token {
		return errors.New("metrics_token_file: the metrics token is the API token; give Prometheus a token of its own")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not one of text, json", c.LogFormat)
	}
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if err := c.validateSwarm(); err != nil {
		return err
	}
	if c.Network.Egress.On() {
		host := c.Engine.Host
		if host == "" {
			host = os.Getenv("DOCKER_HOST")
		}
		if host != "" && !strings.HasPrefix(host, "unix://") {
			return fmt.Errorf("network.egress: the engine at %s is on another machine, whose firewall this daemon cannot keep; "+
				"set network.egress.enabled: false and fence that machine's user containers there", host)
		}
	}
	return nil
}

// defaults fills the daemon's own defaults (the core fills its own).
func (c *Config) defaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8765"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	c.Engine.Defaults()
}

// Logger makes the logger the config asks for, writing to stderr.
func (c *Config) Logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// Daemon is one running spawnd.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	engine  backend.Set
	manager *spawnd.Manager
	ln      net.Listener
	reg     *prometheus.Registry
	builder *envBuilder
}

// New connects to the engine, builds the core and opens the listener. It does
// not wait for the engine: a daemon started while the engine is down serves
// health (engine down) and catches up when the engine comes.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = cfg.Logger()
	}
	set, err := backends.Open(cfg.Engine, cfg.StopGrace)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spawnd_build_info",
		Help: "1, labelled with spawnd's version, the Go it was built with, and the engine backend."}, []string{"version", "goversion", "backend"})
	buildInfo.WithLabelValues(Build().Version, runtime.Version(), cfg.Engine.Backend).Set(1)
	buildSeconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "spawnd_build_duration_seconds",
		Help:    "Env image builds through the daemon (the API, and starts that wait for an image), by status (success, failure).",
		Buckets: []float64{1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800}}, []string{"status"})
	buildSeconds.WithLabelValues("success")
	buildSeconds.WithLabelValues("failure")
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo, buildSeconds)
	caCerts, err := images.ReadCACerts(images.CAFilesFromEnv())
	if err != nil {
		set.Close()
		return nil, fmt.Errorf("%s: %w", images.CACertsEnv, err)
	}

	var mgr *spawnd.Manager
	builder := &envBuilder{envs: func() map[string]spawnd.EnvConfig { return mgr.Config().Envs }, seconds: buildSeconds, log: log, running: map[string]bool{}, caCerts: caCerts}
	var opts []spawnd.Option
	if set.Builder != nil && set.Images != nil {
		builder.eng = buildEngine{set.Builder, set.Images}
		if set.BuildsInPlace {
			// A start whose env has no image builds it and waits. (On Swarm the
			// image must reach the registry: spawnd build, then spawnd image push.)
			opts = append(opts, spawnd.WithBuilds(builder.forStart, 0))
		}
	}
	if cfg.Hub.URL != "" {
		opts = append(opts, spawnd.WithActivity(&hubActivity{url: cfg.Hub.URL, token: cfg.Hub.Token}))
	}
	if cfg.Engine.Homes == "node" {
		if set.NodeHomes == nil {
			set.Close()
			return nil, fmt.Errorf("engine.homes: node, but the %s backend cannot pin homes to nodes", set.Name)
		}
		opts = append(opts, spawnd.WithHomes(set.NodeHomes(cfg.HomesRoot, cfg.Network.Name)))
	}
	f, err := fence(cfg, log)
	if err != nil {
		set.Close()
		return nil, err
	}
	if f != nil {
		opts = append(opts, spawnd.WithFence(f))
	}
	mgr, err = spawnd.NewManager(cfg.Config, set, log, reg, opts...)
	if err != nil {
		set.Close()
		return nil, err
	}
	ln, err := server.Listen(cfg.Listen)
	if err != nil {
		mgr.Close()
		set.Close()
		return nil, err
	}
	return &Daemon{cfg: cfg, log: log, engine: set, manager: mgr, ln: ln, reg: reg, builder: builder}, nil
}

// Addr is the address the API listens on.
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// Manager is the lifecycle core (for in-process tests).
func (d *Daemon) Manager() *spawnd.Manager { return d.manager }

// Run serves until ctx ends. It reconciles with the engine first (waiting at
// most 5 s for it) so that the first answers already include every running
// server, then serves the API while following the engine's events.
func (d *Daemon) Run(ctx context.Context) error {
	mgr, reg := d.manager, d.reg
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- mgr.Run(ctx) }()

	select {
	case <-mgr.Synced():
	case <-time.After(5 * time.Second):
		d.log.Warn("the engine did not answer within 5 s; serving anyway, health reports engine down until it does")
	case err := <-runErr: // a setting the engine cannot honour (e.g. the user network's)
		return err
	case <-ctx.Done():
	}
	b := Build()
	info := api.VersionInfo{Version: b.Version, Revision: b.Revision, Modified: b.Modified, GoVersion: b.Go, APIVersion: api.Version}
	vctx, vcancel := context.WithTimeout(ctx, 2*time.Second)
	if ei, err := d.engine.Runtime.Info(vctx); err == nil {
		info.EngineVersion, info.EngineAPI = ei.Version, ei.APIVersion
	}
	vcancel()
	h, err := server.New(mgr, server.Options{Token: d.cfg.Token, MetricsToken: d.cfg.MetricsToken, Version: info, Registry: reg, Logger: d.log, Builder: d.builder, Images: d.engine.Builder})
	if err != nil {
		return err
	}
	servers, _ := mgr.List()
	d.log.Info("spawnd serving", "listen", d.ln.Addr().String(), "tls", d.cfg.TLS.CertFile != "", "engine_api", info.EngineAPI,
		"homes_root", d.cfg.HomesRoot, "instance", d.cfg.Instance, "servers", len(servers), "synced", servers != nil)
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(ctx, d.ln, h, d.cfg.TLS.CertFile, d.cfg.TLS.KeyFile) }()
	// The listener was bound in New: connections from here on are served.
	if err := sdNotify(fmt.Sprintf("READY=1\nSTATUS=serving %d servers on %s", len(servers), d.ln.Addr())); err != nil {
		d.log.Warn("could not tell systemd the daemon is ready", "err", err)
	}
	select {
	case err = <-serveErr:
		cancel()
		<-runErr
	case err = <-runErr: // fatal: the core cannot go on with this config
		cancel()
		<-serveErr
	}
	return err
}

// Close releases the listener, background work and the engine client. User
// containers keep running.
func (d *Daemon) Close() error {
	d.ln.Close()
	d.manager.Close()
	return d.engine.Close()
}

// buildEngine is a backend's Builder with its image store: what a build
// through the daemon needs (every build is normalized through the store).
type buildEngine struct {
	backend.Builder
	backend.ImageStore
}

// fence is the egress rules for the manager (nil when the config turns
// them off, after removing this instance's old rules).
func fence(cfg Config, log *slog.Logger) (spawnd.Fence, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	table := egress.Table(cfg.Instance)
	if !cfg.Network.Egress.On() {
		if err := egress.Remove(ctx, table); err != nil {
			log.Debug("egress rules off; could not look for an old table", "table", table, "err", err)
		}
		return nil, nil
	}
	if err := egress.Check(ctx); err != nil {
		return nil, fmt.Errorf("network.egress: %w; run spawnd as root (or with CAP_NET_ADMIN; in a container, cap_add: [NET_ADMIN] and host networking), "+
			"or set network.egress.enabled: false", err)
	}
	log.Info("egress rules on", "table", "inet "+table, "blocked", len(cfg.Network.Egress.Blocked()), "host_ports", cfg.Network.Egress.HostPorts)
	return egress.New(cfg.Instance), nil
}

// readSecret reads a one-line secret from the file a config key names.
// fillSecret reads *value from file (config key key) when the value itself
// is not set, and checks the file is not readable by others.
func fillSecret(key string, value *string, file string) error {
	if *value != "" || file == "" {
		return nil
	}
	v, err := readSecret(key, file)
	if err != nil {
		return err
	}
	if err := api.CheckTokenFile(file); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	*value = v
	return nil
}

func readSecret(key, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}
