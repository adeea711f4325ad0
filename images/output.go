package images

import (
	"regexp"
	"strings"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend"
)

var stepRE = regexp.MustCompile(`^Step (\d+/\d+) : (.*)`)

// buildLines turns the engine's build output into progress events: one per
// Dockerfile step, with "Using cache" marking cached layers.
func buildLines(opts *Options, began time.Time, phase string) func(backend.BuildLine) {
	step := ""
	return func(bl backend.BuildLine) {
		line := strings.TrimSpace(bl.Stream)
		if m := stepRE.FindStringSubmatch(line); m != nil {
			step = "layer " + m[1]
			msg := m[2]
			if len(msg) > 100 {
				msg = msg[:100] + "…"
			}
			opts.emit(began, Event{Phase: phase, Step: step, Message: msg})
			return
		}
		if line == "---> Using cache" {
			opts.emit(began, Event{Phase: phase, Step: step, Message: "cached", Cached: true})
			return
		}
		if bl.Bytes > 0 {
			opts.emit(began, Event{Phase: phase, Step: step, Message: "transferring", Bytes: bl.Bytes})
		}
	}
}

// lineTail keeps the last non-empty lines of a build's output.
type lineTail struct {
	max   int
	lines []string
}

func newLineTail(n int) *lineTail { return &lineTail{max: n} }

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

func (t *lineTail) add(s string) {
	for _, l := range strings.Split(ansiRE.ReplaceAllString(s, ""), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "---> ") && !strings.HasPrefix(l, " ---> ") {
			t.lines = append(t.lines, l)
		}
	}
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *lineTail) String() string {
	if len(t.lines) == 0 {
		return ""
	}
	return "; the build's last lines:\n  " + strings.Join(t.lines, "\n  ")
}

// Event is one step of a lock or build, as it happens. The daemon's API
// sends it as api.BuildEvent (the same fields); the builder does not speak
// the wire.
type Event struct {
	Time      time.Time
	Phase     string // "lock", "fetch", "build"
	Step      string
	Message   string
	ElapsedMS int64
	Bytes     int64
	Cached    bool
	// Done is set on the last event; Tag, ImageID and Built report the
	// result, Error a failure.
	Done    bool
	Tag     string
	ImageID string
	Built   bool
	Error   string
}
