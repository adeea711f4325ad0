package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/images"
)

// progressSink renders build events: a live line on a terminal, plain lines
// otherwise, JSON lines with --json.
func progressSink(w io.Writer, asJSON bool) func(images.Event) {
	if asJSON {
		enc := json.NewEncoder(w)
		var mu sync.Mutex
		return func(ev images.Event) {
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(api.BuildEvent(ev)) // the API's shape: one format for --json everywhere
		}
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	var mu sync.Mutex
	lastStep := ""
	return func(ev images.Event) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf("[%6.1fs] %-5s %-11s %s", float64(ev.ElapsedMS)/1000, ev.Phase, ev.Step, ev.Message)
		if ev.Bytes > 0 {
			line += " " + humanBytes(ev.Bytes)
		}
		if !tty {
			if ev.Bytes > 0 && ev.Step == lastStep {
				return // plain output: no byte counters
			}
			lastStep = ev.Step
			fmt.Fprintln(w, line)
			return
		}
		if len(line) > 120 {
			line = line[:119] + "…"
		}
		// A live line: steps that finish stay, the rest is overwritten.
		fmt.Fprintf(w, "\r\033[K%s", line)
		if ev.Done || (ev.Step != lastStep && lastStep != "") || strings.HasPrefix(ev.Step, "done") {
			fmt.Fprintln(w)
		}
		lastStep = ev.Step
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
