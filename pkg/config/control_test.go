package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const minimalListener = `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[pools.web]
[[pools.web.backends]]
address = "127.0.0.1:9001"
`

// TestControlSocket: control_socket as written, relative to the file, off
// with "", and the default under $RUNTIME_DIRECTORY (first of a list).
func TestControlSocket(t *testing.T) {
	for _, tc := range []struct {
		name, env, top, want string
	}{
		{"off outside systemd", "", "", ""},
		{"default under systemd", "/run/lbctl", "", "/run/lbctl/lbctl.sock"},
		{"first of several runtime directories", "/run/lbctl:/run/other", "", "/run/lbctl/lbctl.sock"},
		{"relative runtime directory ignored", "run/lbctl", "", ""},
		{"explicit", "/run/lbctl", `control_socket = "/var/run/lb/ctl.sock"`, "/var/run/lb/ctl.sock"},
		{"relative to the config file", "", `control_socket = "ctl.sock"`, "/etc/lbctl/ctl.sock"},
		{"explicitly off under systemd", "/run/lbctl", `control_socket = ""`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RUNTIME_DIRECTORY", tc.env)
			cfg, err := Parse("/etc/lbctl/lbctl.toml", []byte(tc.top+"\n"+minimalListener))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ControlSocket != tc.want {
				t.Errorf("ControlSocket %q, want %q", cfg.ControlSocket, tc.want)
			}
			// The client commands read the same path leniently.
			if got := ControlSocketOf("/etc/lbctl/lbctl.toml", []byte(tc.top+"\n"+minimalListener+"\nbogus = 1\n")); got != tc.want {
				t.Errorf("ControlSocketOf %q, want %q", got, tc.want)
			}
		})
	}
}

// TestControlSocketAndHostsErrors: each bad value names its line and key.
func TestControlSocketAndHostsErrors(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", "")
	for _, tc := range []struct {
		name, src, want string
	}{
		{"blank socket", "control_socket = \"  \"\n", `t.toml:1: control_socket: must not be blank`},
		{"socket not a string", "control_socket = 1\n", `t.toml:1: control_socket: expected a string, got integer`},
		{"socket path too long", "control_socket = \"/" + strings.Repeat("x", 120) + "\"\n", `t.toml:1: control_socket: path "/xxx`},
		{"host with port", "[admin]\nhosts = [\"lb1.internal\", \"lb2:9900\"]\n", `t.toml:2: admin.hosts[1]: invalid host name "lb2:9900"`},
		{"host not a string", "[admin]\nhosts = [1]\n", `t.toml:2: admin.hosts[0]: expected a host name, got integer`},
		{"hosts not an array", "[admin]\nhosts = \"lb1\"\n", `t.toml:2: admin.hosts: expected an array, got string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.toml", []byte(tc.src+minimalListener))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("got %v, want Errors", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("errors:\n%v\nwant one starting %q", err, tc.want)
			}
		})
	}
}

func TestAdminHosts(t *testing.T) {
	cfg, err := Parse("t.toml", []byte("[admin]\nhosts = [\"LB1.Internal.\", \"lb-2\", \"::1\"]\n"+minimalListener))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"lb1.internal", "lb-2", "::1"}; !reflect.DeepEqual(cfg.Admin.Hosts, want) {
		t.Errorf("hosts %q, want %q", cfg.Admin.Hosts, want)
	}
}
