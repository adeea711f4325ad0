package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestClientSettings: client commands take the daemon's address and token
// from flags, then SPAWND_* variables, then the daemon's own config.
func TestClientSettings(t *testing.T) {
	dir := t.TempDir()
	// No daemon config in the default place, whatever this machine's /etc holds.
	old := daemonConfigPath
	t.Cleanup(func() { daemonConfigPath = old })
	daemonConfigPath = filepath.Join(dir, "no-such-spawnd.yaml")
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("from-the-config-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flagTok := filepath.Join(dir, "flag-token")
	if err := os.WriteFile(flagTok, []byte("from-the-flag-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wildcard := write("wild.yaml", "listen: 0.0.0.0:9001\ntoken_file: "+tok+"\n")
	tlsCfg := write("tls.yaml", "listen: '[::]:9002'\ntoken_file: "+tok+"\ntls: {cert_file: /x.pem, key_file: /x.key}\n")
	unix := write("unix.yaml", "listen: unix:///run/spawnd/api.sock\ntoken_file: "+tok+"\n")
	noToken := write("notoken.yaml", "listen: 127.0.0.1:9003\n")
	unreadable := write("badtoken.yaml", "listen: 127.0.0.1:9004\ntoken_file: "+filepath.Join(dir, "missing")+"\n")

	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		addr, tok string
		err       string
	}{
		{"config, wildcard listen", []string{"--config", wildcard}, nil, "127.0.0.1:9001", "from-the-config-token-0123", ""},
		{"config, TLS on v6", []string{"--config", tlsCfg}, nil, "https://[::1]:9002", "from-the-config-token-0123", ""},
		{"config, unix socket", []string{"--config", unix}, nil, "unix:///run/spawnd/api.sock", "from-the-config-token-0123", ""},
		{"flags win", []string{"--config", wildcard, "--addr", "10.0.0.5:1", "--token-file", flagTok}, nil, "10.0.0.5:1", "from-the-flag-token-0123", ""},
		{"env wins over config", []string{"--config", wildcard}, map[string]string{"SPAWND_ADDR": "10.0.0.6:2", "SPAWND_TOKEN": "env-token-0123456789"}, "10.0.0.6:2", "env-token-0123456789", ""},
		{"config without token_file", []string{"--config", noToken}, nil, "", "", "names no token_file"},
		{"token file unreadable", []string{"--config", unreadable}, nil, "", "", "token_file in " + unreadable},
		{"nothing at all", nil, nil, "", "", "no token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"SPAWND_ADDR", "SPAWND_TOKEN", "SPAWND_TOKEN_FILE"} {
				t.Setenv(k, tc.env[k])
			}
			var cf clientFlags
			cmd := &cobra.Command{Use: "x"}
			cf.register(cmd)
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			addr, tok, err := cf.settings()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("settings = %q %q %v; want an error with %q", addr, tok, err, tc.err)
				}
				return
			}
			if err != nil || addr != tc.addr || tok != tc.tok {
				t.Fatalf("settings = %q %q %v; want %q %q", addr, tok, err, tc.addr, tc.tok)
			}
		})
	}
}
