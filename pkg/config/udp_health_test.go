package config

import (
	"strings"
	"testing"
)

// UDP send-expect checks: send is required (over UDP nothing comes back
// until a datagram is sent), and expect is bounded by what a check reads.
func TestUDPSendExpectValidation(t *testing.T) {
	base := "[listeners.u]\nprotocol = \"udp\"\nbind = \"127.0.0.1:5353\"\npool = \"p\"\n" +
		"[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:53\"\n[pools.p.health]\ncheck = \"send-expect\"\n"
	for _, tc := range []struct{ name, extra, want string }{
		{"missing send", "expect = \"pong\"\n",
			`t.toml:8: pools.p.health: send is required (non-empty) for check = "send-expect" on a udp pool`},
		{"empty send", "send = \"\"\nexpect = \"pong\"\n",
			`t.toml:10: pools.p.health.send: required (non-empty) for check = "send-expect" on a udp pool`},
		{"expect too long", "send = \"ping\"\nexpect = \"" + strings.Repeat("x", 64<<10+1) + "\"\n",
			`t.toml:11: pools.p.health.expect: at most 65536 bytes (the check reads no more than that)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.toml", []byte(base+tc.extra))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
	if _, err := Parse("t.toml", []byte(base+"send = \"ping\"\nexpect = \"pong\"\n")); err != nil {
		t.Fatalf("valid UDP send-expect check rejected: %v", err)
	}
}
