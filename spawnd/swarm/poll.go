package swarm

import (
	"context"
	"time"
)

// until is the backend's one "ask the manager until" loop (Swarm reports
// no task events): it calls check, then waits wait(elapsed) and calls it
// again, until check says done or fails — its error is until's — or ctx
// ends (ctx.Err(), wrapped by the caller with what it waited for).
func until(ctx context.Context, wait func(elapsed time.Duration) time.Duration, check func() (done bool, err error)) error {
	begun := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		if done, err := check(); done || err != nil {
			return err
		}
		t.Reset(wait(time.Since(begun)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// every waits d between calls.
func every(d time.Duration) func(time.Duration) time.Duration {
	return func(time.Duration) time.Duration { return d }
}

// quickThen waits fast while an answer usually comes, then slow.
func quickThen(fast, within, slow time.Duration) func(time.Duration) time.Duration {
	return func(elapsed time.Duration) time.Duration {
		if elapsed < within {
			return fast
		}
		return slow
	}
}

// backoff doubles its wait from first up to most.
func backoff(first, most time.Duration) func(time.Duration) time.Duration {
	next := first
	return func(time.Duration) time.Duration {
		w := next
		next = min(2*next, most)
		return w
	}
}
