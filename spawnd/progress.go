package spawnd

import (
	"context"
	"sync"
)

// progressLog is the event log of one start attempt. Readers get every event
// from the first one, however late they subscribe, and then wait for more
// until the log is closed (ready or failed).
type progressLog struct {
	mu      sync.Mutex
	events  []ProgressEvent
	done    bool
	changed chan struct{} // closed and replaced on every change
}

func newProgressLog() *progressLog {
	return &progressLog{changed: make(chan struct{})}
}

// closedLog is a finished log holding the given events.
func closedLog(events ...ProgressEvent) *progressLog {
	return &progressLog{events: events, done: true, changed: make(chan struct{})}
}

func (p *progressLog) add(ev ProgressEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.events = append(p.events, ev)
	if ev.Ready || ev.Failed {
		p.done = true
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// Follow calls fn for every event, from the first, until the log is done,
// fn returns an error, or ctx ends.
func (p *progressLog) Follow(ctx context.Context, fn func(ProgressEvent) error) error {
	next := 0
	for {
		p.mu.Lock()
		batch := append([]ProgressEvent(nil), p.events[next:]...)
		done, changed := p.done, p.changed
		p.mu.Unlock()
		for _, ev := range batch {
			if err := fn(ev); err != nil {
				return err
			}
		}
		next += len(batch)
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
