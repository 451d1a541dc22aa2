package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// This file holds the keys of the ways in: the top-level control_socket
// and [admin] hosts.

// ControlSocketName is the control socket's file name under
// $RUNTIME_DIRECTORY when control_socket is not set.
const ControlSocketName = "lbctl.sock"

// maxSocketPath is the longest path a unix socket can be bound at on Linux
// (sun_path holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// getenv reads the environment (tests replace it).
var getenv = os.Getenv

// DefaultControlSocket is the control socket used when the config file does
// not set control_socket: $RUNTIME_DIRECTORY/lbctl.sock when systemd set
// $RUNTIME_DIRECTORY (RuntimeDirectory=lbctl; of a colon-separated list,
// the first entry), else "" (no control socket).
func DefaultControlSocket() string {
	dir, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":")
	if dir == "" || !filepath.IsAbs(dir) {
		return ""
	}
	return filepath.Join(dir, ControlSocketName)
}

// controlSocket decodes the top-level control_socket: a path (relative to
// the config file's directory), "" for none, or the default when absent.
func (d *decoder) controlSocket(root *table) string {
	s, ok := root.str("control_socket")
	if !ok {
		if root.has("control_socket") {
			return "" // wrong type, reported by str
		}
		return DefaultControlSocket()
	}
	switch {
	case s == "":
		return "" // off, even under systemd
	case strings.TrimSpace(s) == "":
		root.errf("control_socket", `must not be blank; write "" for no control socket, or leave the key out for the default ($RUNTIME_DIRECTORY/lbctl.sock)`)
		return ""
	}
	p := d.relPath(s)
	if len(p) > maxSocketPath {
		root.errf("control_socket", "path %q is %d bytes long; a unix socket path holds at most %d", p, len(p), maxSocketPath)
		return ""
	}
	return p
}

// hosts decodes [admin] hosts: the names a Host header may carry besides
// IP literals and localhost (a guard against DNS rebinding).
func (t *table) hosts(key string) []string {
	items, ok := t.array(key)
	if !ok {
		return nil
	}
	out := []string{}
	for _, it := range items {
		s, isString := it.v.(string)
		if !isString {
			t.d.add(it.path, it.line, "expected a host name, got %s", tomlType(it.v))
			continue
		}
		if err := checkHostName(s); err != nil {
			t.d.add(it.path, it.line, "%v", err)
			continue
		}
		out = append(out, strings.ToLower(strings.TrimSuffix(s, ".")))
	}
	return out
}

// checkHostName accepts a DNS name or an IP address, without port.
func checkHostName(s string) error {
	if _, err := netip.ParseAddr(s); err != nil && !validHostname(s) {
		return fmt.Errorf("invalid host name %q (want a name such as \"lb1.internal\", without port)", s)
	}
	return nil
}

// ControlSocketOf reads only the control socket of a config file's
// content, leniently, for the client commands (like AdminDefaults): the
// path a serve process of that file uses, or "" for none. file is the
// config file's path (a relative control_socket is taken from its
// directory); content that does not parse gives the default.
func ControlSocketOf(file string, data []byte) string {
	var f struct {
		ControlSocket *string `toml:"control_socket"`
	}
	if _, err := toml.Decode(string(data), &f); err != nil || f.ControlSocket == nil {
		return DefaultControlSocket()
	}
	s := *f.ControlSocket
	if strings.TrimSpace(s) == "" {
		return ""
	}
	d := &decoder{file: file}
	return d.relPath(s)
}
