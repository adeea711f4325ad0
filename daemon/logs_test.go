package daemon_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
)

// TestLogsRedacted on the real engine: a server that prints its secret
// environment and a token-like string; spawnd logs shows its lines with
// both redacted, bounded by --tail; a user without a server is a clear 404.
func TestLogsRedacted(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const secret = "hub-secret-value-0123456789"
	const hexTok = "0123456789abcdef0123456789abcdef"
	_, err := h.client.Start(ctx, "lia", "", api.StartRequest{
		Environment: map[string]string{"JUPYTERHUB_API_TOKEN": secret},
		Cmd: []string{"sh", "-c", `echo "starting with $JUPYTERHUB_API_TOKEN"; echo "url ?token=abc123&x=1 key ` + hexTok + `"; ` +
			`for i in 1 2 3 4 5; do echo "line $i"; done; exec httpd -f -p 8888 -h /tmp`},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, err = h.client.Logs(ctx, "lia", "", 100); err == nil && strings.Contains(out, "line 5") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log never showed the server's lines: %q %v", out, err)
		}
	}
	if strings.Contains(out, secret) || strings.Contains(out, hexTok) || strings.Contains(out, "abc123") {
		t.Fatalf("the log shows a secret:\n%s", out)
	}
	if !strings.Contains(out, "starting with [redacted]") || !strings.Contains(out, "token=[redacted]") {
		t.Errorf("the log's secrets are not marked redacted:\n%s", out)
	}
	if two, err := h.client.Logs(ctx, "lia", "", 2); err != nil || strings.Count(strings.TrimSpace(two), "\n") != 1 || !strings.Contains(two, "line 5") {
		t.Errorf("--tail 2: %q %v; want the last two lines", two, err)
	}
	if _, err := h.client.Logs(ctx, "nobody", "", 10); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("logs of a user without a server: %v; want not found", err)
	}
}

// TestUnexpectedExitCarriesItsLog: a server that dies on its own after it
// was ready (the engine reports the exit) shows why in its status: the end
// of its log, secrets replaced.
func TestUnexpectedExitCarriesItsLog(t *testing.T) {
	eng := testenv.Engine(t)
	h := startDaemon(t, eng, testConfig(t, eng))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const secret = "hub-secret-value-9876543210"
	_, err := h.client.Start(ctx, "ulla", "", api.StartRequest{
		Environment: map[string]string{"JUPYTERHUB_API_TOKEN": secret},
		Cmd: []string{"sh", "-c", `httpd -p 8888 -h /tmp; echo "token $JUPYTERHUB_API_TOKEN"; sleep 2; ` +
			`echo "MemoryError: the kernel asked for 90 GiB"; exit 3`},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.WaitReady(ctx, "ulla", ""); err != nil {
		t.Fatal(err)
	}
	var s api.Server
	for deadline := time.Now().Add(30 * time.Second); s.LogTail == ""; time.Sleep(200 * time.Millisecond) {
		if s, err = h.client.Status(ctx, "ulla", ""); err != nil || time.Now().After(deadline) {
			t.Fatalf("the status never showed the exit's log: %+v %v", s, err)
		}
	}
	if s.State != api.StateFailed || s.Reason != "exited with code 3" || !strings.Contains(s.LogTail, "MemoryError: the kernel asked for 90 GiB") {
		t.Errorf("status after the exit: %s %q, log tail %q", s.State, s.Reason, s.LogTail)
	}
	if strings.Contains(s.LogTail, secret) || !strings.Contains(s.LogTail, "token [redacted]") {
		t.Errorf("the log tail shows the secret or does not mark it: %q", s.LogTail)
	}
}

// TestLogsFollow: spawnd logs -f's call streams the lines a server writes
// after it was asked, secrets replaced, and ends when the server does.
func TestLogsFollow(t *testing.T) {
	eng := testenv.Engine(t)
	h := startDaemon(t, eng, testConfig(t, eng))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const secret = "hub-secret-value-follow-0123"
	_, err := h.client.Start(ctx, "finn", "", api.StartRequest{
		Environment: map[string]string{"JUPYTERHUB_API_TOKEN": secret},
		Cmd: []string{"sh", "-c", `httpd -p 8888 -h /tmp; echo "first"; sleep 2; ` +
			`for i in 1 2 3; do echo "tick $i $JUPYTERHUB_API_TOKEN"; sleep 0.3; done; echo last; exit 0`},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.WaitReady(ctx, "finn", ""); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	fctx, fcancel := context.WithTimeout(ctx, 60*time.Second)
	defer fcancel()
	if err := h.client.FollowLogs(fctx, "finn", "", 10, &out); err != nil {
		t.Fatal(err)
	}
	if fctx.Err() != nil {
		t.Fatalf("the stream did not end with the server; got %q", out.String())
	}
	got := out.String()
	if !strings.Contains(got, "first") || !strings.Contains(got, "tick 3 [redacted]") || !strings.HasSuffix(got, "last\n") || strings.Contains(got, secret) {
		t.Errorf("followed log %q; want first … tick 3 [redacted] … last, no secret", got)
	}
	if err := h.client.FollowLogs(ctx, "nobody", "", 10, io.Discard); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("following the log of a user without a server: %v; want not found", err)
	}
}
