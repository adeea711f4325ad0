package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// startTimes: when the daemon's start of each user answered (its "server
// started" log record), to tell the daemon's part of a class start from
// the hub's.
type startTimes struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s *startTimes) get(user string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[user]
	return t, ok
}

// startLog is the daemon's log handler in the bench: it keeps nothing but
// the time of each "server started" record.
type startLog struct {
	times *startTimes
	user  string
}

func (h startLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h startLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "server started" && h.user != "" {
		h.times.mu.Lock()
		h.times.at[h.user] = r.Time
		h.times.mu.Unlock()
	}
	return nil
}

func (h startLog) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == "user" {
			h.user = a.Value.String()
		}
	}
	return h
}

func (h startLog) WithGroup(string) slog.Handler { return h }
