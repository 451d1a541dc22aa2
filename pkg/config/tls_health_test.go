package config

import (
	"testing"
)

// TLS health checks: check = "tls" and "https", server_name only with
// them, and a server name that SNI can carry.
func TestTLSHealthChecks(t *testing.T) {
	base := "[listeners.l]\nbind = \"127.0.0.1:8443\"\npool = \"p\"\n" +
		"[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:443\"\n[pools.p.health]\n"
	valid := []struct {
		name, body string
		want       Health
	}{
		{"tls with server name", "check = \"tls\"\nserver_name = \"api.example.com\"\n",
			Health{Check: "tls", ServerName: "api.example.com"}},
		{"tls without server name", "check = \"tls\"\n", Health{Check: "tls"}},
		{"https with the http keys", "check = \"https\"\nserver_name = \"api.example.com\"\npath = \"/healthz\"\nhost = \"vhost\"\nexpect_status = \"2xx\"\n",
			Health{Check: "https", ServerName: "api.example.com", Path: "/healthz", Host: "vhost", ExpectStatus: []StatusRange{{200, 299}}}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("t.toml", []byte(base+tc.body))
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			h := cfg.Pools["p"].Health
			if h.Check != tc.want.Check || h.ServerName != tc.want.ServerName {
				t.Errorf("check %q server_name %q, want %q %q", h.Check, h.ServerName, tc.want.Check, tc.want.ServerName)
			}
			if tc.want.Path != "" && (h.Path != tc.want.Path || h.Host != tc.want.Host || len(h.ExpectStatus) != 1 || h.ExpectStatus[0] != tc.want.ExpectStatus[0]) {
				t.Errorf("path %q host %q expect_status %v, want %q %q %v", h.Path, h.Host, h.ExpectStatus, tc.want.Path, tc.want.Host, tc.want.ExpectStatus)
			}
		})
	}
	invalid := []struct{ name, body, want string }{
		{"server_name on http", "check = \"http\"\nserver_name = \"a.example\"\n",
			`t.toml:9: pools.p.health.server_name: only valid with check = "tls" or "https"`},
		{"server_name on the default tcp check", "server_name = \"a.example\"\n",
			`t.toml:8: pools.p.health.server_name: only valid with check = "tls" or "https"`},
		{"path on tls", "check = \"tls\"\npath = \"/\"\n",
			`t.toml:9: pools.p.health.path: only valid with check = "http" or "https"`},
		{"an IP address", "check = \"tls\"\nserver_name = \"10.0.0.1\"\n",
			`t.toml:9: pools.p.health.server_name: must be a DNS host name (not an IP address: SNI cannot carry one), got "10.0.0.1"`},
		{"a space", "check = \"https\"\nserver_name = \"a b\"\n",
			`t.toml:9: pools.p.health.server_name: must be a DNS host name (not an IP address: SNI cannot carry one), got "a b"`},
		{"empty", "check = \"https\"\nserver_name = \"\"\n",
			`t.toml:9: pools.p.health.server_name: must be a DNS host name (not an IP address: SNI cannot carry one), got ""`},
		{"not a string", "check = \"tls\"\nserver_name = 443\n",
			`t.toml:9: pools.p.health.server_name: expected a string, got integer`},
		{"unknown check", "check = \"tls13\"\n",
			`t.toml:8: pools.p.health.check: unknown check "tls13" (want tcp, http, tls, https, send-expect or none)`},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			checkErrors(t, base+tc.body, tc.want)
		})
	}
}
