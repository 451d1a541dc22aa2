package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem found in a configuration file. Its text has the form
//
//	FILE:LINE: KEY.PATH: message
//
// for example "lbctl.toml:42: pools.web.health.interval: invalid duration "2x"".
// Line is 0 only when no line can be named (a key that is missing from the
// file altogether); Key is empty for TOML syntax errors.
type Error struct {
	File string // the file name given to Load or Parse
	Line int    // 1-based line where the offending key stands; 0 if unknown
	Key  string // key path such as "listeners.web.bind" or "pools.web.backends[0].address"
	Msg  string // what is wrong, without the location
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, sorted by line (problems
// without a line come last). Parse and Load return it as their error when
// the file is invalid, so callers can print each problem on its own line:
//
//	var errs config.Errors
//	if errors.As(err, &errs) { for _, e := range errs { ... } }
type Errors []*Error

func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, err := range e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// sortErrors orders errors by line, keeping the order in which they were
// found for errors on the same line; errors without a line go last.
func sortErrors(errs Errors) {
	sort.SliceStable(errs, func(i, j int) bool {
		li, lj := errs[i].Line, errs[j].Line
		if li == 0 || lj == 0 {
			return lj == 0 && li != 0
		}
		return li < lj
	})
}
