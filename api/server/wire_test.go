package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/spawnd"
)

// TestEveryKindHasACode: each error kind of the core maps to its own API
// code, so a new kind cannot fall through to "internal" unnoticed.
func TestEveryKindHasACode(t *testing.T) {
	seen := map[api.Code]bool{}
	for _, k := range spawnd.Kinds {
		c, ok := codes[k]
		if !ok {
			t.Errorf("the core's error kind %q has no API code", k)
		}
		if seen[c] {
			t.Errorf("two kinds map to %s", c)
		}
		seen[c] = true
	}
}

func TestWireError(t *testing.T) {
	cause := errors.New("open /srv/spawnd/homes/alice: permission denied")
	for _, tc := range []struct {
		name     string
		err      error
		code     api.Code
		message  string
		mustHide string
	}{
		{"kind", &spawnd.Error{Kind: spawnd.ErrConflict, Msg: "stop it first"}, api.CodeConflict, "stop it first", ""},
		{"wrapped kind", fmt.Errorf("starting: %w", &spawnd.Error{Kind: spawnd.ErrUnavailable, Msg: "engine down", Cause: cause}), api.CodeUnavailable, "engine down", "/srv/spawnd"},
		{"internal with cause", &spawnd.Error{Msg: "the home could not be prepared", Cause: cause}, api.CodeInternal, "the home could not be prepared", "/srv/spawnd"},
		{"plain error", cause, api.CodeInternal, "internal error; see the daemon's log", "/srv/spawnd"},
		{"edge error", api.Errorf(api.CodeUnauthorized, "missing token"), api.CodeUnauthorized, "missing token", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := wireError(tc.err)
			if e.Code != tc.code || e.Message != tc.message {
				t.Errorf("wireError = %s %q, want %s %q", e.Code, e.Message, tc.code, tc.message)
			}
			if tc.mustHide != "" && strings.Contains(e.Message, tc.mustHide) {
				t.Errorf("the host path reached the caller: %q", e.Message)
			}
		})
	}
}
