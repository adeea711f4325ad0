package docker_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// TestRunCaptureFiles: files handed to a throw-away container arrive byte
// for byte, with their parent directories, including one larger than
// Linux lets an environment variable be (128 KiB) - the size of a CA
// bundle, which as an environment variable failed with "argument list too
// long". A path that is not clean and absolute is refused before anything
// runs.
func TestRunCaptureFiles(t *testing.T) {
	eng := testenv.Engine(t)
	img := testenv.EnsureBusybox(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := bytes.Repeat([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 6000) // 354 KB
	res, err := eng.RunCapture(ctx, backend.RunSpec{Image: img, Network: "none", Labels: map[string]string{testenv.TestLabel: "1"},
		Files: map[string][]byte{"/tmp/a/b/big.pem": big, "/tmp/a/small": []byte("hello\n"), "/etc/x": []byte("x")},
		Cmd:   []string{"sh", "-c", "wc -c < /tmp/a/b/big.pem; cat /tmp/a/small /etc/x; stat -c '%a %u' /tmp/a/b /tmp/a/b/big.pem"}})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d\nhello\nx755 0\n644 0\n", len(big))
	if res.ExitCode != 0 || string(res.Stdout) != want {
		t.Errorf("the container printed %q (exit %d, stderr %q); want %q", res.Stdout, res.ExitCode, res.Stderr, want)
	}

	for _, bad := range []string{"tmp/relative", "/tmp/../etc/passwd", "/"} {
		_, err := eng.RunCapture(ctx, backend.RunSpec{Image: img, Network: "none", Labels: map[string]string{testenv.TestLabel: "1"},
			Files: map[string][]byte{bad: []byte("x")}, Cmd: []string{"true"}})
		if err == nil || !strings.Contains(err.Error(), "clean absolute path") {
			t.Errorf("RunCapture with file %q: %v; want a 'clean absolute path' error", bad, err)
		}
	}
}
