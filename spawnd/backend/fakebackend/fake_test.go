package fakebackend_test

import (
	"testing"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/backendtest"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

// TestConformance: the fake keeps the lifecycle contract the Docker
// backend keeps, so the core's unit tests on it mean something.
func TestConformance(t *testing.T) {
	var rt *fakebackend.Runtime
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) (backend.Runtime, backend.Runtime) {
			rt = fakebackend.New()
			return rt, rt
		},
		Image:    "img:1",
		Port:     8888,
		Serve:    []string{"serve"},
		ExitWith: func(code int) []string { return []string{"exit", string(rune('0' + code))} },
		Exit:     func(id string, code int) { rt.Exit(id, code, false) },
		MakeHalf: func(t *testing.T, spec backend.ContainerSpec) string {
			id := "half-" + spec.Name
			rt.Add(backend.Container{ID: id, Name: spec.Name, Labels: spec.Labels, State: backend.Created, Created: time.Now(), Image: spec.Image, Port: spec.Port})
			return id
		},
	})
}
