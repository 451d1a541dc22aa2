// Package udpproxy forwards UDP datagrams between clients and backends in
// sessions. (Placeholder: being written.)
package udpproxy

// Proxy is one UDP listener generation's forwarding configuration.
type Proxy struct{}
