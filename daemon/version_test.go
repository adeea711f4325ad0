package daemon

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildInfo(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	devel := debug.Module{Version: "(devel)"}
	for _, tc := range []struct {
		name                string
		version, rev, dirty string // -ldflags
		bi                  *debug.BuildInfo
		ok                  bool
		want                string
	}{
		{name: "no build info", want: "dev (commit unknown: built without VCS information;"},
		{name: "go install of a tag", bi: &debug.BuildInfo{Main: debug.Module{Version: "v1.4.2"}}, ok: true, want: "1.4.2 (commit unknown"},
		{name: "a source build of a commit", bi: &debug.BuildInfo{Main: devel, Settings: vcs("0123456789abcdef0123", "false")}, ok: true,
			want: "dev (commit 0123456789ab;"},
		{name: "a source build stamped with a pseudo-version", bi: &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261207161348-4180de363e6e+dirty"}, Settings: vcs("4180de363e6e0000", "true")}, ok: true,
			want: "dev (commit 4180de363e6e, modified;"},
		{name: "a source build of a changed tree", bi: &debug.BuildInfo{Main: devel, Settings: vcs("0123456789abcdef0123", "true")}, ok: true,
			want: "dev (commit 0123456789ab, modified;"},
		{name: "a release build (ldflags) keeps the build info's commit", version: "v0.3.0", bi: &debug.BuildInfo{Main: devel, Settings: vcs("fedcba9876543210", "false")}, ok: true,
			want: "0.3.0 (commit fedcba987654;"},
		{name: "a build in a container: all from ldflags", version: "0.3.0-4-gabc", rev: "abcdef0123456789", dirty: "true", bi: &debug.BuildInfo{Main: devel}, ok: true,
			want: "0.3.0-4-gabc (commit abcdef012345, modified;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := buildInfo(tc.version, tc.rev, tc.dirty, tc.bi, tc.ok).String()
			if !strings.HasPrefix(got, tc.want) || !strings.Contains(got, "linux/") {
				t.Errorf("%q; want it to start %q and name the platform", got, tc.want)
			}
		})
	}
}
