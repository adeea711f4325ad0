package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd"
)

// envBuilder runs `spawnd build` for the API (POST /v1/envs/{env}/build),
// one build per env at a time. The daemon picks the new lock up by itself.
type envBuilder struct {
	envs func() map[string]spawnd.EnvConfig // the config's, as last (re)loaded
	// seconds observes each build's duration by status (success, failure).
	seconds *prometheus.HistogramVec
	eng     images.Builder
	log     *slog.Logger

	// caCerts are extra CA certificates for locking and fetching, from
	// $SPAWND_BUILD_CA_CERTS in the daemon's environment.
	caCerts []byte

	mu      sync.Mutex
	running map[string]bool
}

func (b *envBuilder) BuildEnv(ctx context.Context, env string, relock bool, fn func(api.BuildEvent)) error {
	e, ok := b.envs()[env]
	if !ok {
		return api.Errorf(api.CodeNotFound, "no env %q", trim(env))
	}
	if e.Spec == "" {
		return api.Errorf(api.CodeConflict, "env %q runs a fixed image (envs.%s.image), not a spec; there is nothing to build", env, env)
	}
	if b.eng == nil {
		return api.Errorf(api.CodeConflict, "this engine backend cannot build envs; build with spawnd build on a Docker engine (and spawnd image push for a swarm)")
	}
	b.mu.Lock()
	if b.running[env] {
		b.mu.Unlock()
		return api.Errorf(api.CodeConflict, "a build of env %q is already running", env)
	}
	b.running[env] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.running, env)
		b.mu.Unlock()
	}()

	began := time.Now()
	fn(api.BuildEvent{Time: began, Phase: "build", Step: "accepted", Message: "build of env " + env + " accepted"})
	res, err := images.Build(ctx, b.eng, e.Spec, images.Options{Relock: relock, Progress: func(ev images.Event) { fn(api.BuildEvent(ev)) }, CACerts: b.caCerts})
	last := api.BuildEvent{Time: time.Now(), Phase: "build", Step: "result", Done: true, ElapsedMS: time.Since(began).Milliseconds()}
	status := "success"
	if err != nil {
		status = "failure"
	}
	if b.seconds != nil {
		b.seconds.WithLabelValues(status).Observe(time.Since(began).Seconds())
	}
	if err != nil {
		b.log.Warn("env build failed", "env", env, "err", err)
		last.Error = err.Error()
		last.Message = "build failed"
	} else {
		b.log.Info("env built", "env", env, "tag", res.Tag, "built", res.Built)
		last.Tag, last.ImageID, last.Built = res.Tag, res.ImageID, res.Built
		last.Message = "image " + res.Tag + " ready"
	}
	fn(last)
	return nil
}

// forStart builds env's current lock (no relock) for the starts that wait
// for its image: the build's messages go to progress; its failure, with
// the builder's reason, is the error.
func (b *envBuilder) forStart(ctx context.Context, env string, progress func(string)) error {
	var failed string
	err := b.BuildEnv(ctx, env, false, func(ev api.BuildEvent) {
		if ev.Error != "" {
			failed = ev.Error
		}
		if ev.Message != "" {
			progress(ev.Message)
		}
	})
	if err != nil {
		return err
	}
	if failed != "" {
		return errors.New(failed)
	}
	return nil
}

func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
