package spawnd

import (
	"context"
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric label names follow JupyterHub's own metrics, so one dashboard can
// join them: "status" is an outcome, as in jupyterhub_server_spawn_duration_seconds.
type metrics struct {
	starts       *prometheus.CounterVec   // status
	failures     *prometheus.CounterVec   // reason
	startSeconds *prometheus.HistogramVec // status
	pullSeconds  *prometheus.HistogramVec // status
	stops        prometheus.Counter
	reaped       prometheus.Counter
	reconciles   prometheus.Counter
	queued       prometheus.Gauge
	booting      prometheus.GaugeFunc
	poolStarts   *prometheus.CounterVec // pool, how: warm (took a warm server) or cold (found none)
}

// Start statuses.
const (
	startSuccess = "success"         // a new server is listening
	startRunning = "already-running" // the server was running: nothing to do
	startJoined  = "joined"          // shared a start in flight
	startFailure = "failure"
)

// durationBuckets spans a warm start (a fraction of a second) to a pull or
// a class start behind the admission limit (minutes).
var durationBuckets = []float64{.1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300}

func newMetrics(m *Manager, reg prometheus.Registerer) *metrics {
	mt := &metrics{
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spawnd_starts_total",
			Help: "Start requests by status: success (a new server listens), already-running, joined (shared a start in flight), failure.",
		}, []string{"status"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spawnd_start_failures_total",
			Help: "Failed starts by reason: invalid, forbidden, not_found, conflict (e.g. no image), unavailable (engine, no machine), server_failed (exited or never listened), timeout, internal.",
		}, []string{"reason"}),
		startSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spawnd_start_duration_seconds",
			Help:    "Time from a start request to its server listening on its port (status success), or to its failure (status failure).",
			Buckets: durationBuckets,
		}, []string{"status"}),
		pullSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spawnd_image_pull_duration_seconds",
			Help:    "Time a start spent pulling its env's image, by status (success, failure).",
			Buckets: durationBuckets,
		}, []string{"status"}),
		stops:      prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_stops_total", Help: "Servers stopped."}),
		reaped:     prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_reaped_total", Help: "Half-made containers removed by the reaper."}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_reconciles_total", Help: "Full reconciles with the engine."}),
		queued:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "spawnd_starts_queued", Help: "Starts waiting for their turn behind max_concurrent_starts."}),
		poolStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spawnd_pool_starts_total",
			Help: "Starts of a pool's env and profile, by how they began: warm (took a warm server) or cold (found none ready).",
		}, []string{"pool", "how"}),
	}
	for _, pc := range m.cfg.Pools {
		mt.poolStarts.WithLabelValues(pc.Name(), "warm")
		mt.poolStarts.WithLabelValues(pc.Name(), "cold")
	}
	mt.booting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spawnd_starts_booting", Help: "Servers admitted and booting (created, not yet listening)."}, func() float64 {
		return float64(len(m.admit))
	})
	// Every known label value from the start, at 0: rate() and increase()
	// see the first event, and a dashboard finds every series.
	for _, st := range []string{startSuccess, startRunning, startJoined, startFailure} {
		mt.starts.WithLabelValues(st)
	}
	for _, r := range failureReasons {
		mt.failures.WithLabelValues(r)
	}
	for _, st := range []string{startSuccess, startFailure} {
		mt.startSeconds.WithLabelValues(st)
		mt.pullSeconds.WithLabelValues(st)
	}
	if reg == nil {
		return mt
	}
	engine := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spawnd_engine_up", Help: "1 when the engine answered last time."}, func() float64 {
		if m.engineUp.Load() {
			return 1
		}
		return 0
	})
	reg.MustRegister(mt.starts, mt.failures, mt.startSeconds, mt.pullSeconds, mt.stops, mt.reaped, mt.reconciles, mt.queued, mt.booting,
		mt.poolStarts, engine, serversCollector{m}, newDriftCollector(m), poolCollector{m})
	return mt
}

// failureReasons are the values of spawnd_start_failures_total's reason.
var failureReasons = []string{"invalid", "forbidden", "not_found", "conflict", "unavailable", "server_failed", "timeout", "internal"}

// failureReason is a failed start's reason label: its kind, or timeout.
func failureReason(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	switch KindOf(err) {
	case ErrInvalid:
		return "invalid"
	case ErrForbidden:
		return "forbidden"
	case ErrNotFound:
		return "not_found"
	case ErrConflict:
		return "conflict"
	case ErrUnavailable:
		return "unavailable"
	case ErrServerFailed:
		return "server_failed"
	}
	return "internal"
}

// serversCollector reports the servers the daemon knows by state, env,
// profile and whether their lock is outdated.
type serversCollector struct{ m *Manager }

var serversDesc = prometheus.NewDesc("spawnd_servers", "Servers the daemon knows, by state (pending, running, stopped, failed; ready is running and listening), env, profile and outdated (its lock is no longer its env's).",
	[]string{"state", "env", "profile", "outdated"}, nil)

func (c serversCollector) Describe(ch chan<- *prometheus.Desc) { ch <- serversDesc }

func (c serversCollector) Collect(ch chan<- prometheus.Metric) {
	type k struct{ state, env, profile, outdated string }
	counts := map[k]int{}
	if list, err := c.m.List(); err == nil {
		for _, s := range list {
			state := string(s.State)
			if s.State == StateRunning && s.Ready {
				state = "ready"
			}
			counts[k{state, s.Env, s.Profile, strconv.FormatBool(s.Outdated)}]++
		}
	}
	for key, n := range counts {
		ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, float64(n), key.state, key.env, key.profile, key.outdated)
	}
}

var (
	poolReadyDesc   = prometheus.NewDesc("spawnd_pool_ready", "Warm servers ready to be taken, by pool (env/profile).", []string{"pool"}, nil)
	poolWarmingDesc = prometheus.NewDesc("spawnd_pool_warming", "Warm servers booting, by pool.", []string{"pool"}, nil)
	poolWantDesc    = prometheus.NewDesc("spawnd_pool_wanted", "Warm servers the pool keeps at this time (its size or its window's).", []string{"pool"}, nil)
	poolColdDesc    = prometheus.NewDesc("spawnd_pool_cold", "1 when the pool's env cannot be pre-warmed (spawnd ps says why).", []string{"pool"}, nil)
)

// poolCollector reports each pool as it is at the scrape.
type poolCollector struct{ m *Manager }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolReadyDesc
	ch <- poolWarmingDesc
	ch <- poolWantDesc
	ch <- poolColdDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.m.Pools() {
		cold := 0.0
		if p.Cold != "" {
			cold = 1
		}
		ch <- prometheus.MustNewConstMetric(poolReadyDesc, prometheus.GaugeValue, float64(p.Ready), p.Name)
		ch <- prometheus.MustNewConstMetric(poolWarmingDesc, prometheus.GaugeValue, float64(p.Warming), p.Name)
		ch <- prometheus.MustNewConstMetric(poolWantDesc, prometheus.GaugeValue, float64(p.Want), p.Name)
		ch <- prometheus.MustNewConstMetric(poolColdDesc, prometheus.GaugeValue, cold, p.Name)
	}
}
