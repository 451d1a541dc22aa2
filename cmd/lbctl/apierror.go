package main

import (
	"fmt"
	"strings"
)

// apiError is an error answer of the admin API: its HTTP status and the
// message of its {"error": ...}. A message of several lines (a config
// file's problems, at reload) reads as their count, then one problem per
// line, the way validate prints them:
//
//	lbctl: reload rejected, the old configuration keeps running: 2 problems (HTTP 400):
//	/etc/lbctl/lbctl.toml:8: pools.web.backends[0].bogus: unknown key
//	/etc/lbctl/lbctl.toml:10: listeners.b.pool: unknown pool "nope"
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string {
	msg := strings.TrimSpace(e.msg)
	n := strings.Count(msg, "\n") + 1
	if n == 1 {
		return fmt.Sprintf("%s (HTTP %d)", msg, e.status)
	}
	return fmt.Sprintf("%s (HTTP %d):\n%s", plural(n, "problem"), e.status, msg)
}
