package envs

import (
	"strings"
	"testing"
	"time"
)

func TestFindInHistory(t *testing.T) {
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	h := []HistoryEntry{
		{Lock: &Lock{Digest: "sha256:abc111", Created: at}},
		{Lock: &Lock{Digest: "sha256:abc222", Created: at}},
		{Lock: &Lock{Digest: "sha256:def333", Created: at}},
	}
	for _, tc := range []struct{ want, got, err string }{
		{"sha256:abc111", "sha256:abc111", ""},
		{"abc2", "sha256:abc222", ""},
		{"def", "sha256:def333", ""},
		{"abc", "", "matches 2 locks"},
		{"fff", "", "never built for this env; its history has abc111, abc222, def333"},
		{"", "", "never built"},
	} {
		e, err := FindInHistory(h, tc.want)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("FindInHistory(%q) = %v; want an error with %q", tc.want, err, tc.err)
			}
			continue
		}
		if err != nil || e.Lock.Digest != tc.got {
			t.Errorf("FindInHistory(%q) = %v, %v; want %s", tc.want, e.Lock, err, tc.got)
		}
	}
	if _, err := FindInHistory(nil, "abc"); err == nil || !strings.Contains(err.Error(), "history is empty") {
		t.Errorf("an empty history: %v", err)
	}
}
