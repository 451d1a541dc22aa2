//go:build !linux

package server

import "testing"

// listenBacklog0 needs Linux's behaviour of a full accept queue (dropped
// SYNs); elsewhere the test that uses it is skipped.
func listenBacklog0(t *testing.T) string {
	t.Skip("connect timeouts are simulated on Linux only")
	return ""
}
