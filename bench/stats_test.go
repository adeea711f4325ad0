package main

import (
	"testing"
	"time"
)

func TestNearestRank(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		in        []time.Duration
		med, tail time.Duration
	}{
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond},
		{"two: the median is the smaller, not the maximum", ms(9, 1), 1 * time.Millisecond, 9 * time.Millisecond},
		{"five, unsorted", ms(5, 1, 4, 2, 3), 3 * time.Millisecond, 5 * time.Millisecond},
		{"four", ms(4, 3, 2, 1), 2 * time.Millisecond, 4 * time.Millisecond},
		{"twenty: p95 is rank 19", ms(20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 10 * time.Millisecond, 19 * time.Millisecond},
	} {
		med, tail := stats(tc.in)
		if med != tc.med || tail != tc.tail {
			t.Errorf("%s: stats = %v, %v; want %v, %v", tc.name, med, tail, tc.med, tc.tail)
		}
	}
	if got := pct(ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99); got != 10*time.Millisecond {
		t.Errorf("p99 of 10 = %v", got)
	}
}
