package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client speaks spawnd's API. Its zero value is not usable; use NewClient.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for the daemon at addr: "http://host:port",
// "https://host:port", a bare "host:port", or "unix:///path/to.sock".
func NewClient(addr, token string) (*Client, error) {
	c := &Client{token: token, http: &http.Client{}}
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		c.base = "http://spawnd"
		c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	case strings.HasPrefix(addr, "http://"), strings.HasPrefix(addr, "https://"):
		c.base = strings.TrimRight(addr, "/")
	case addr == "":
		return nil, fmt.Errorf("no daemon address; set --addr or SPAWND_ADDR")
	default:
		c.base = "http://" + addr
	}
	if _, err := url.Parse(c.base); err != nil {
		return nil, fmt.Errorf("daemon address %q: %w", addr, err)
	}
	return c, nil
}

// PathEscape escapes a name as one path segment: url.PathEscape, and dots
// too, so that "." and ".." are names, not path steps.
func PathEscape(name string) string {
	return strings.ReplaceAll(url.PathEscape(name), ".", "%2E")
}

// ServerPath is the API path of a server; server "" is the default server.
func ServerPath(user, server string) string {
	p := "/" + Version + "/users/" + PathEscape(user)
	if server == "" {
		return p + "/server"
	}
	return p + "/servers/" + PathEscape(server)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// send makes a request and turns an error answer into an *Error.
func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		var eb ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &eb) == nil && eb.Error != nil {
			return nil, eb.Error
		}
		return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d", method, path, resp.StatusCode)}
	}
	return resp, nil
}

// Start starts (or returns the running) server.
func (c *Client) Start(ctx context.Context, user, server string, req StartRequest) (Server, error) {
	var s Server
	err := c.do(ctx, http.MethodPost, ServerPath(user, server), req, &s)
	return s, err
}

// Status returns one server.
func (c *Client) Status(ctx context.Context, user, server string) (Server, error) {
	var s Server
	err := c.do(ctx, http.MethodGet, ServerPath(user, server), nil, &s)
	return s, err
}

// Stop stops one server; its home stays.
func (c *Client) Stop(ctx context.Context, user, server string) (Server, error) {
	var s Server
	err := c.do(ctx, http.MethodDelete, ServerPath(user, server), nil, &s)
	return s, err
}

// List returns every server.
func (c *Client) List(ctx context.Context) ([]Server, error) {
	var l ServerList
	err := c.do(ctx, http.MethodGet, "/"+Version+"/servers", nil, &l)
	return l.Servers, err
}

// Pools reports the pools of warm servers.
func (c *Client) Pools(ctx context.Context) ([]Pool, error) {
	var l PoolList
	err := c.do(ctx, http.MethodGet, "/"+Version+"/pools", nil, &l)
	return l.Pools, err
}

// Options returns the envs and profiles a user with these groups may choose.
func (c *Client) Options(ctx context.Context, groups ...string) (Options, error) {
	var o Options
	q := url.Values{"group": groups}
	err := c.do(ctx, http.MethodGet, "/"+Version+"/options?"+q.Encode(), nil, &o)
	return o, err
}

// Version returns the daemon's and engine's versions.
func (c *Client) Version(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.do(ctx, http.MethodGet, "/"+Version+"/version", nil, &v)
	return v, err
}

// Health asks the daemon whether it and its engine are up (no token needed).
func (c *Client) Health(ctx context.Context) (Health, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/"+Version+"/health", nil)
	if err != nil {
		return Health{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Health{}, err
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return Health{}, fmt.Errorf("decoding health: %w", err)
	}
	return h, nil
}

// DeleteHome deletes a user's home (an admin action; refused while a server
// of the user exists).
func (c *Client) DeleteHome(ctx context.Context, user string) error {
	return c.do(ctx, http.MethodDelete, "/"+Version+"/users/"+PathEscape(user)+"/home?confirm=yes", nil, nil)
}

// Logs returns the last tail lines of a server's log (secrets redacted).
func (c *Client) Logs(ctx context.Context, user, server string, tail int) (string, error) {
	resp, err := c.send(ctx, http.MethodGet, ServerPath(user, server)+"/logs?tail="+strconv.Itoa(tail), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return string(b), err
}

// FollowLogs writes a server's last tail log lines to w, then each line as
// the server writes it, until ctx ends or the server's container does.
func (c *Client) FollowLogs(ctx context.Context, user, server string, tail int, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, ServerPath(user, server)+"/logs?follow=1&tail="+strconv.Itoa(tail), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the log stream: %w", err)
	}
	return nil
}

// Envs reports each env's current lock and the servers on each lock.
func (c *Client) Envs(ctx context.Context) (EnvReport, error) {
	var r EnvReport
	err := c.do(ctx, http.MethodGet, "/"+Version+"/envs", nil, &r)
	return r, err
}

// Rollout moves servers of env on an older lock onto the current one.
func (c *Client) Rollout(ctx context.Context, env string, req RolloutRequest) (RolloutResult, error) {
	var r RolloutResult
	err := c.do(ctx, http.MethodPost, "/"+Version+"/envs/"+PathEscape(env)+"/rollout", req, &r)
	return r, err
}

// MoveHome moves a user's node-pinned home to node (an admin action; refused
// while a server of the user exists).
func (c *Client) MoveHome(ctx context.Context, user, node string) (HomeMove, error) {
	var mv HomeMove
	err := c.do(ctx, http.MethodPost, "/"+Version+"/users/"+PathEscape(user)+"/home/move", HomeMoveRequest{Node: node}, &mv)
	return mv, err
}

// MigrateHome gives a user's home, made under home_owner env, to the user's
// own uid (an admin action; refused while a server of the user exists).
func (c *Client) MigrateHome(ctx context.Context, user string) (HomeMigration, error) {
	var mg HomeMigration
	err := c.do(ctx, http.MethodPost, "/"+Version+"/users/"+PathEscape(user)+"/home/migrate", nil, &mg)
	return mg, err
}

// Progress calls fn for each progress event of the server's current start,
// from the first, until the stream ends (ready or failed).
func (c *Client) Progress(ctx context.Context, user, server string, fn func(ProgressEvent) error) error {
	return c.stream(ctx, http.MethodGet, ServerPath(user, server)+"/progress", func(data []byte) error {
		var ev ProgressEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("decoding a progress event: %w", err)
		}
		return fn(ev)
	})
}

// stream makes a request whose answer is Server-Sent Events and calls fn
// with the data of each event.
func (c *Client) stream(ctx context.Context, method, path string, fn func(data []byte) error) error {
	resp, err := c.send(ctx, method, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: "))
		if !ok {
			continue
		}
		if err := fn(data); err != nil {
			return err
		}
	}
	return sc.Err()
}

// BuildEnv asks the daemon to build an env from its spec (relocking if
// asked) and calls fn with each event until the last (Done).
func (c *Client) BuildEnv(ctx context.Context, env string, relock bool, fn func(BuildEvent) error) error {
	path := "/" + Version + "/envs/" + PathEscape(env) + "/build"
	if relock {
		path += "?relock=1"
	}
	return c.stream(ctx, http.MethodPost, path, func(data []byte) error {
		var ev BuildEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("decoding a build event: %w", err)
		}
		return fn(ev)
	})
}

// WaitReady polls a server until it is ready, gone or failed, or ctx ends.
func (c *Client) WaitReady(ctx context.Context, user, server string) (Server, error) {
	for {
		s, err := c.Status(ctx, user, server)
		if err != nil {
			return s, err
		}
		if s.Ready || s.State == StateStopped || s.State == StateFailed {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// BaseURL is the daemon's address as the client uses it.
func (c *Client) BaseURL() string { return c.base }
