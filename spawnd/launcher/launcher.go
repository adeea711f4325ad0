// Package launcher holds spawnd's warm launcher (issue #28): the files a
// warm server runs instead of its env's command until a start takes it
// (launch.sh finds the command's Python; launcher.py imports the server,
// waits for the hand-off, then runs the entry point), and its boot-cost
// mode, which measures what importing an env's server costs. The core
// mounts the files into warm servers; the image builder copies them into a
// throw-away container to measure an env. It imports nothing of ours.
package launcher

import (
	"embed"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

//go:embed launch.sh launcher.py
var files embed.FS

// Names are the launcher's files.
var Names = []string{"launch.sh", "launcher.py"}

// ExitCold is the launcher's exit status for an env it cannot pre-warm
// (its command is not a Python console script); its last log line says why.
const ExitCold = 3

// File returns one of the launcher's files.
func File(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic("launcher: no file " + name) // the names are this package's own
	}
	return b
}

// Cmd is the command that runs the launcher from dir: as a warm server
// (mode "", waiting in handoff) or measuring the boot cost (mode "cost").
func Cmd(dir, handoff string, cost bool, envCmd []string) []string {
	cmd := []string{"/bin/sh", dir + "/launch.sh"}
	if cost {
		cmd = append(cmd, "--cost")
	} else {
		cmd = append(cmd, handoff)
	}
	return append(append(cmd, "--"), envCmd...)
}

// Module is one top-level package and the time importing it took.
type Module struct {
	Package string  `json:"package"`
	Seconds float64 `json:"seconds"`
}

// BootCost is what importing an env's server and its extensions costs,
// every start, before the server knows whom it serves.
type BootCost struct {
	EntryPoint string   `json:"entry_point"`
	CPUSeconds float64  `json:"import_cpu_seconds"` // CPU time of the imports
	Top        []Module `json:"top"`                // the most expensive top-level packages (self time, -X importtime)
	Cold       string   `json:"cold,omitempty"`     // why the env cannot be pre-warmed (then nothing else is set)
}

// ParseBootCost reads the cost mode's output: its last line is the JSON.
func ParseBootCost(out []byte) (BootCost, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var c BootCost
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &c); err != nil {
		return c, fmt.Errorf("the launcher's boot cost is not JSON (%q): %w", lines[len(lines)-1], err)
	}
	return c, nil
}

// String says the cost in one line, as spawnd build and doctor print it.
func (c BootCost) String() string {
	if c.Cold != "" {
		return "cannot be pre-warmed: " + c.Cold
	}
	var top []string
	sort.SliceStable(c.Top, func(i, j int) bool { return c.Top[i].Seconds > c.Top[j].Seconds })
	for _, m := range c.Top {
		top = append(top, m.Package+" "+strconv.FormatFloat(m.Seconds, 'f', 2, 64)+" s")
	}
	return fmt.Sprintf("%.2f CPU-s to import %s and its extensions on every start; most: %s", c.CPUSeconds, c.EntryPoint, strings.Join(top, ", "))
}
