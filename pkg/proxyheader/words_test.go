package proxyheader

import (
	"errors"
	"strings"
	"testing"
)

// TestParseErrorsCountBytes: the errors count bytes in words that fit the
// count (1 byte, 2 bytes).
func TestParseErrorsCountBytes(t *testing.T) {
	const v1 = "PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n"
	for _, tc := range []struct{ in, want string }{
		{"P", "incomplete (1 byte)"},
		{"PR", "incomplete (2 bytes)"},
		{v1 + "x", "1 byte after the header"},
		{v1 + "xy", "2 bytes after the header"},
	} {
		_, err := Parse([]byte(tc.in))
		if !errors.Is(err, ErrMalformed) || !strings.HasSuffix(err.Error(), ": "+tc.want) {
			t.Errorf("Parse(%q): %v, want ErrMalformed ending in %q", tc.in, err, tc.want)
		}
	}
}
