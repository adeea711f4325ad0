// Package ci decides one thing for every test: are we in CI? In CI a test
// that cannot find what it needs (an engine, a JupyterHub, root, a tool)
// fails; on a developer's machine it is skipped with a message that says
// what to install. Every such skip in the repository goes through Skip.
package ci

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// Enabled reports whether CI is set to a true value (1, true, True, TRUE,
// yes), as CI systems and .ci/run set it.
func Enabled() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv("CI"))) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// Skip skips the test outside CI and fails it in CI: a missing component is
// never a silent pass there.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Enabled() {
		t.Fatalf("%s (CI is set: a failure, not a skip)", msg)
	}
	t.Skip(msg)
}
