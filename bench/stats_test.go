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

// TestTableIsOneSitting: the table has every figure group in order; a
// group this run did not measure says so and carries no number.
func TestTableIsOneSitting(t *testing.T) {
	b := &bench{groups: []string{"spawn", "status", "hub"}}
	b.group = "status"
	b.add(row{figure: "status: p50", spawnd: "1 ms", raw: "1 ms", ratio: "1.00×", target: "≤ 1.1×", pass: true})
	got := b.table()
	want := "| figure | spawnd | raw engine | ratio | target | result |\n| --- | --- | --- | --- | --- | --- |\n" +
		"| spawn: not run in this sitting (go run ./bench -only spawn) | - | - | - | - | - |\n" +
		"| status: p50 | 1 ms | 1 ms | 1.00× | ≤ 1.1× | pass |\n" +
		"| hub: not run in this sitting (go run ./bench -only hub) | - | - | - | - | - |\n"
	if got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
}
