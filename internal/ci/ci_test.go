package ci

import "testing"

func TestEnabled(t *testing.T) {
	for _, tc := range []struct {
		val  string
		want bool
	}{
		{"", false}, {"0", false}, {"false", false}, {"no", false},
		{"1", true}, {"true", true}, {"True", true}, {"TRUE", true}, {"yes", true}, {" true ", true},
	} {
		t.Setenv("CI", tc.val)
		if got := Enabled(); got != tc.want {
			t.Errorf("CI=%q: Enabled() = %v, want %v", tc.val, got, tc.want)
		}
	}
}
