package daemon

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// What a build of spawnd is. Each may be set at build time with -ldflags
// "-X github.com/spawnd/spawnd/daemon.Version=1.2.3" (and Revision,
// Modified=true|false): scripts/release, scripts/build-image and the
// Dockerfile do, because a build inside a container or with
// GOFLAGS=-buildvcs=false has no VCS stamp. Unset, they come from the
// build info: the module's version (go install …@v1.2.3), the VCS
// revision and whether the tree had uncommitted changes (a go build in a
// git checkout).
var (
	Version  = ""
	Revision = ""
	Modified = ""
)

// BuildInfo is what `spawnd --version`, GET /v1/version and `spawnd doctor`
// say about the binary.
type BuildInfo struct {
	Version  string // a release's version, or "dev"
	Revision string // the commit, "" when unknown
	Modified bool   // built from a tree with uncommitted changes
	Go       string
}

// Build is this binary's BuildInfo.
func Build() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	return buildInfo(Version, Revision, Modified, bi, ok)
}

// buildInfo merges what -ldflags set (first) with the build info.
func buildInfo(version, revision, modified string, bi *debug.BuildInfo, ok bool) BuildInfo {
	b := BuildInfo{Version: strings.TrimPrefix(version, "v"), Revision: revision, Modified: modified == "true", Go: runtime.Version()}
	if ok && bi != nil {
		// Go stamps a source build with a pseudo-version of no tag
		// (v0.0.0-20261207161348-4180de363e6e+dirty): that is the commit,
		// said below, not a version.
		if v := bi.Main.Version; b.Version == "" && v != "" && v != "(devel)" && !strings.HasPrefix(v, "v0.0.0-") {
			b.Version = strings.TrimSuffix(strings.TrimPrefix(v, "v"), "+dirty")
		}
		if b.Revision == "" {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					b.Revision = s.Value
				case "vcs.modified":
					b.Modified = s.Value == "true"
				}
			}
		}
		if bi.GoVersion != "" {
			b.Go = bi.GoVersion
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}

// String is one line: "1.2.3 (commit 0123456789ab, modified; go1.24.1 linux/amd64)".
func (b BuildInfo) String() string {
	rev := "commit unknown: built without VCS information"
	if b.Revision != "" {
		rev = "commit " + b.Revision[:min(12, len(b.Revision))]
		if b.Modified {
			rev += ", modified"
		}
	}
	return fmt.Sprintf("%s (%s; %s %s/%s)", b.Version, rev, b.Go, runtime.GOOS, runtime.GOARCH)
}
