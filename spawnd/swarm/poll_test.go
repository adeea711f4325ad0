package swarm

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name  string
		check func(n int) (bool, error)
		ctx   func() (context.Context, context.CancelFunc)
		calls int
		want  error
	}{
		{"done at once", func(int) (bool, error) { return true, nil }, nil, 1, nil},
		{"done on the third", func(n int) (bool, error) { return n == 3, nil }, nil, 3, nil},
		{"its error ends it", func(n int) (bool, error) { return false, boom }, nil, 1, boom},
		{"a context that ends", func(int) (bool, error) { return false, nil },
			func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 20*time.Millisecond)
			},
			-1, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			n := 0
			err := until(ctx, every(time.Millisecond), func() (bool, error) { n++; return tt.check(n) })
			if !errors.Is(err, tt.want) {
				t.Fatalf("until = %v; want %v", err, tt.want)
			}
			if tt.calls >= 0 && n != tt.calls {
				t.Fatalf("check called %d times; want %d", n, tt.calls)
			}
		})
	}
}

func TestWaits(t *testing.T) {
	b := backoff(10*time.Millisecond, 35*time.Millisecond)
	var got []time.Duration
	for range 4 {
		got = append(got, b(0))
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 35 * time.Millisecond, 35 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoff = %v; want %v", got, want)
		}
	}
	q := quickThen(time.Millisecond, time.Second, time.Minute)
	if q(0) != time.Millisecond || q(2*time.Second) != time.Minute {
		t.Fatalf("quickThen: %v then %v", q(0), q(2*time.Second))
	}
}
