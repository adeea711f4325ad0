package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHealthCommand: spawnd health exits 0 with the engine up, non-zero
// with it down or with no daemon at the address, saying which.
func TestHealthCommand(t *testing.T) {
	engine := "up"
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health" || r.Header.Get("Authorization") != "" {
			http.Error(w, "unexpected", 400)
			return
		}
		if engine != "up" {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"status":"degraded","engine":"down"}`))
			return
		}
		w.Write([]byte(`{"status":"ok","engine":"up"}`))
	}))
	defer ts.Close()
	run := func(addr string) (string, error) {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"health", "--addr", addr})
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	for _, tc := range []struct {
		name, engine, addr, want string
		ok                       bool
	}{
		{"up", "up", ts.URL, "ok (engine up)", true},
		{"engine down", "down", ts.URL, "the daemon's engine is down", false},
		{"no daemon", "up", "127.0.0.1:1", "spawnd at 127.0.0.1:1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			engine = tc.engine
			out, err := run(tc.addr)
			if (err == nil) != tc.ok {
				t.Fatalf("spawnd health: %v %q; want ok=%v", err, out, tc.ok)
			}
			got := out
			if err != nil {
				got += err.Error()
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("spawnd health said %q; want %q", got, tc.want)
			}
		})
	}
}
