//go:build !linux

package lbtest

import "testing"

// Blackhole needs Linux's behaviour of a full accept queue (dropped SYNs);
// elsewhere the test that asks for one is skipped.
func Blackhole(t testing.TB) string {
	t.Skip("connect timeouts are simulated on Linux only")
	return ""
}
