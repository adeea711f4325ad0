package spawnd

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	starts       *prometheus.CounterVec
	startSeconds prometheus.Histogram
	stops        prometheus.Counter
	reaped       prometheus.Counter
	reconciles   prometheus.Counter
	queued       prometheus.Gauge
	booting      prometheus.GaugeFunc
}

func newMetrics(m *Manager, reg prometheus.Registerer) *metrics {
	mt := &metrics{
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spawnd_starts_total",
			Help: "Start requests by result: created, running (already running), joined (shared a start in flight), failed.",
		}, []string{"result"}),
		startSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "spawnd_start_duration_seconds",
			Help:    "Time from a start request to its server listening on its port.",
			Buckets: []float64{.1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120},
		}),
		stops:      prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_stops_total", Help: "Servers stopped."}),
		reaped:     prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_reaped_total", Help: "Half-made containers removed by the reaper."}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{Name: "spawnd_reconciles_total", Help: "Full reconciles with the engine."}),
		queued:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "spawnd_starts_queued", Help: "Starts waiting for their turn behind max_concurrent_starts."}),
	}
	mt.booting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spawnd_starts_booting", Help: "Servers admitted and booting (created, not yet listening)."}, func() float64 {
		return float64(len(m.admit))
	})
	if reg == nil {
		return mt
	}
	servers := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spawnd_servers", Help: "Servers the daemon knows."}, func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		return float64(len(m.servers))
	})
	engine := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spawnd_engine_up", Help: "1 when the engine answered last time."}, func() float64 {
		if m.engineUp.Load() {
			return 1
		}
		return 0
	})
	reg.MustRegister(mt.starts, mt.startSeconds, mt.stops, mt.reaped, mt.reconciles, mt.queued, mt.booting, servers, engine)
	return mt
}
