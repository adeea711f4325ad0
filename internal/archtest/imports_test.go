// Package archtest holds the test that keeps spawnd's rooms apart: it reads
// every package's imports with `go list` and fails on an arrow that must
// never exist (docs/DESIGN-NOTES.md, "Rooms and arrows").
package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/spawnd/spawnd"

// engineClients are the imports that speak to an engine directly.
var engineClients = []string{"github.com/moby/moby/client/...", "github.com/google/go-containerregistry/pkg/v1/daemon"}

// rule: a package (exact, or with "/..." a tree) must not import any of deny
// (each exact, or with "/..." a tree), in its own files and, when tests is
// set, in its test files too.
type rule struct {
	pkg   string
	deny  []string
	tests bool // also forbid in the package's own test files
	why   string
}

var rules = []rule{
	{module + "/spawnd", []string{module + "/api/...", module + "/daemon", module + "/doctor", module + "/images", module + "/spawnd/docker"}, true,
		"the core speaks its own domain types and errors; the edge (api/server) converts"},
	{module + "/spawnd", engineClients, true, "the core reaches an engine only through spawnd/backend.Runtime"},
	{module + "/spawnd/backend/...", []string{module + "/spawnd", module + "/spawnd/docker", module + "/api/...", module + "/daemon"}, true,
		"the contract and its fake and suite are backend-neutral"},
	{module + "/spawnd/backend/...", engineClients, true, "the contract and its fake and suite are backend-neutral"},
	{module + "/spawnd/docker", []string{module + "/spawnd", module + "/doctor", module + "/images", module + "/api/...", module + "/daemon"}, false,
		"a backend implements spawnd/backend and returns its types, never a caller's"},
	{module + "/spawnd/swarm", []string{module + "/spawnd", module + "/doctor", module + "/images", module + "/api/...", module + "/daemon"}, false,
		"a backend implements spawnd/backend and returns its types, never a caller's"},
	{module + "/api", []string{module + "/..."}, true, "api is the wire contract any client imports; it imports no other spawnd package"},
	{module + "/images", []string{module + "/spawnd", module + "/daemon"}, false, "the builder reaches an engine only through backend.Builder and backend.ImageStore"},
	{module + "/images", engineClients, false, "the builder reaches an engine only through backend.Builder and backend.ImageStore"},
	{module + "/doctor", engineClients, false, "doctor reads an engine through a small interface"},
	{module + "/daemon", engineClients, false, "the daemon gets its backend from spawnd/backends, it does not drive an engine"},
	{module + "/cmd/...", engineClients, false, "cmd/ is thin; engines are reached through a backend"},
	{module + "/cmd/...", []string{module + "/spawnd/swarm"}, false, "cmd/ gets backends from spawnd/backends, the one place that picks one"},
	{module + "/daemon", []string{module + "/spawnd/docker", module + "/spawnd/swarm"}, false, "the daemon gets its backend from spawnd/backends, the one place that picks one"},
	{module + "/spawnd", []string{module + "/spawnd/backends", module + "/spawnd/swarm"}, true, "the core takes a backend.Set; it never picks or knows a backend"},
	{module + "/images", []string{module + "/api/..."}, true, "the builder speaks its own events (images.Event); the edge makes the wire type"},
	{module + "/images", []string{module + "/spawnd/backends", module + "/spawnd/docker", module + "/spawnd/swarm"}, false, "the builder takes its engine and store as arguments"},
	{module + "/api/server", engineClients, false, "the edge never reaches an engine"},
}

type pkgInfo struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

func TestForbiddenImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkgInfo
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages; the test is not looking at the module", len(pkgs))
	}
	matched := map[string]bool{}
	for _, p := range pkgs {
		for _, r := range rules {
			if !covers(r.pkg, p.ImportPath) {
				continue
			}
			matched[r.pkg] = true
			imports := p.Imports
			if r.tests {
				imports = append(append(append([]string(nil), imports...), p.TestImports...), p.XTestImports...)
			}
			for _, imp := range imports {
				for _, d := range r.deny {
					if covers(d, imp) && !covers(r.pkg, imp) && imp != p.ImportPath {
						t.Errorf("%s imports %s: %s", p.ImportPath, imp, r.why)
					}
				}
			}
		}
	}
	for _, r := range rules {
		if !matched[r.pkg] {
			t.Errorf("rule for %s matched no package; the layout changed, fix the rule", r.pkg)
		}
	}
}

func covers(pattern, pkg string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == base || strings.HasPrefix(pkg, base+"/")
	}
	return pkg == pattern
}
