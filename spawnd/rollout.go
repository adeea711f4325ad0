package spawnd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ActivitySource says when each server was last active, keyed by
// ActivityKey(user, server): the hub's view (spawnd reads it with a token
// scoped to reading activity; daemon.hubActivity).
type ActivitySource interface {
	Activity(ctx context.Context) (map[string]time.Time, error)
}

// ActivityKey is the key of a server in an ActivitySource's answer.
func ActivityKey(user, server string) string { return user + "/" + server }

// RolloutRequest says which servers of an env on an older lock a rollout
// moves onto the current one.
type RolloutRequest struct {
	All     bool          // every such server, idle or not
	Users   []string      // only these users' servers, idle or not
	IdleFor time.Duration // otherwise: servers idle at least this long (default 1h)
	DryRun  bool          // say who would move; move nobody
	// Concurrency bounds how many servers stop at once (default 4).
	Concurrency int
}

// RolloutItem is one server a rollout looked at.
type RolloutItem struct {
	User, Server string
	From         string // its lock digest
	Moved        bool
	Why          string // why it moved, would move, or stays
}

// RolloutResult is a rollout's account, server by server.
type RolloutResult struct {
	Env, To string
	Items   []RolloutItem
}

// Rollout moves servers of env that run an older lock onto the current
// one. A server moves by being stopped: its home stays, the hub sees it
// gone, and the user's next start runs the current lock and opens with a
// notice that the env was updated. Only servers idle for IdleFor (by the
// hub's activity) move, unless All or Users say otherwise. It is
// idempotent: run again after an interruption, it moves what is left.
func (m *Manager) Rollout(ctx context.Context, env string, req RolloutRequest) (RolloutResult, error) {
	e, ok := m.envs.get(env)
	if !ok {
		return RolloutResult{}, errorf(ErrNotFound, "env %q is not configured; choose one of %v", bound(env), sortedKeys(m.envs.current()))
	}
	if req.IdleFor <= 0 {
		req.IdleFor = time.Hour
	}
	if req.Concurrency <= 0 {
		req.Concurrency = 4
	}
	for _, u := range req.Users {
		if err := ValidateUser(u); err != nil {
			return RolloutResult{}, err
		}
	}
	servers, err := m.List()
	if err != nil {
		return RolloutResult{}, err
	}
	byIdle := !req.All && len(req.Users) == 0
	var act map[string]time.Time
	if byIdle {
		if m.activity == nil {
			return RolloutResult{}, errorf(ErrConflict, "moving only idle servers needs the hub's activity: set hub.url and hub.token_file in the daemon's config, or name --users, or move --all")
		}
		if act, err = m.activity.Activity(ctx); err != nil {
			return RolloutResult{}, &Error{Kind: ErrUnavailable, Msg: "reading the servers' activity from the hub failed: " + err.Error(), Cause: err}
		}
	}
	res := RolloutResult{Env: env, To: e.LockDigest}
	now := time.Now()
	var move []int
	for _, s := range servers {
		if s.Env != env || s.LockDigest == e.LockDigest || s.State != StateRunning {
			continue
		}
		it := RolloutItem{User: s.User, Server: s.Server, From: s.LockDigest}
		switch {
		case len(req.Users) > 0 && !slices.Contains(req.Users, s.User):
			it.Why = "not among the users asked for"
		case req.All || len(req.Users) > 0:
			it.Why = "asked for"
			move = append(move, len(res.Items))
		default:
			last, known := act[ActivityKey(s.User, s.Server)]
			switch {
			case !known:
				it.Why = "the hub reports no activity for it; left alone"
			case now.Sub(last) < req.IdleFor:
				it.Why = fmt.Sprintf("active %s ago (less than %s)", now.Sub(last).Round(time.Second), req.IdleFor)
			default:
				it.Why = fmt.Sprintf("idle for %s", now.Sub(last).Round(time.Second))
				move = append(move, len(res.Items))
			}
		}
		res.Items = append(res.Items, it)
	}
	if req.DryRun {
		for _, i := range move {
			res.Items[i].Why = "would move: " + res.Items[i].Why
		}
		return res, nil
	}
	sem := make(chan struct{}, req.Concurrency)
	var wg sync.WaitGroup
	for _, i := range move {
		it := &res.Items[i]
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			// Cut off (the caller left, the daemon stops): no new move
			// begins; the ones under way finish. Run it again to go on.
			it.Why = "not moved: the rollout was cut off before this server; run it again"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// The notice first: a start racing the stop still tells the user.
			m.notices.post(key{it.User, it.Server}, fmt.Sprintf("Your env %s was updated while you were away (lock %s → %s); your files are as you left them.",
				env, short(strings.TrimPrefix(it.From, "sha256:")), short(strings.TrimPrefix(e.LockDigest, "sha256:"))))
			if _, err := m.Stop(ctx, it.User, it.Server); err != nil {
				it.Why = "not moved: " + Message(err)
				return
			}
			it.Moved = true
			m.log.Info("rollout moved a server", "env", env, "user", bound(it.User), "server", bound(it.Server), "from", it.From, "to", e.LockDigest)
		}()
	}
	wg.Wait()
	return res, nil
}

// takeNotice returns (and forgets) what the next start of k tells the user.
func (m *Manager) takeNotice(k key) string { return m.notices.take(k) }

// noticeBoard is what each server's next start tells its user; its lock
// is its own (a notice changes nothing else).
type noticeBoard struct {
	mu sync.Mutex
	m  map[key]string
}

func (b *noticeBoard) post(k key, msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[key]string)
	}
	b.m[k] = msg
}

func (b *noticeBoard) take(k key) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.m[k]
	delete(b.m, k)
	return n
}
