//go:build !linux

package server

import "net"

// tcpListenConfig enables TCP keep-alive on every accepted connection
// (Go's defaults: 15 s idle, 15 s interval, 9 probes).
func tcpListenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: true}}
}

// setKeepAlive does nothing here: Go's Accept sets keep-alive on every
// accepted connection.
func setKeepAlive(*net.TCPListener) error { return nil }
