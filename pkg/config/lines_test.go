package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// TestIndexLines checks the key-line scanner on the TOML constructs that
// could mislead it: strings that look like tables or keys, comments,
// quoted and dotted keys, multi-line inline tables and nested arrays of
// tables.
func TestIndexLines(t *testing.T) {
	src := "\ufeff" + `# [not.a.table] = 1
title = """
[fake]
fake = "still the string \""""
lit = '''
x = 'y' ''''
"quoted.key" = 1
a . b."c d" = 2 # comment [x]
arr = [ [1, 2],
  # a = 3
  { k = "v" }, "s,]}",
]
inl = { x = 1,
  y = { z = 2 } }
[t]
  u = 1

[[pools.web.backends]]
address = "a"
  [pools.web.backends.extra]
  n = 1
[[pools.web.backends]]   # second
address = 'b'
[[pools.web.backends.checks]]
p = 1
[pools.web.health]
check = "tcp"
date = 1979-05-27 07:32:00
after = true
`
	src = strings.ReplaceAll(src, "\n", "\r\n")
	if _, err := toml.Decode(src, new(map[string]any)); err != nil {
		t.Fatalf("test input is not valid TOML: %v", err)
	}
	got := indexLines([]byte(src))
	want := map[string]int{
		"title":                             2,
		"lit":                               5,
		`"quoted.key"`:                      7,
		"a":                                 8,
		"a.b":                               8,
		`a.b."c d"`:                         8,
		"arr":                               9,
		"arr[0]":                            9,
		"arr[0][1]":                         9,
		"arr[1]":                            11,
		"arr[1].k":                          11,
		"arr[2]":                            11,
		"inl":                               13,
		"inl.y.z":                           14,
		"t":                                 15,
		"t.u":                               16,
		"pools":                             18,
		"pools.web.backends":                18,
		"pools.web.backends[0]":             18,
		"pools.web.backends[0].address":     19,
		"pools.web.backends[0].extra":       20,
		"pools.web.backends[0].extra.n":     21,
		"pools.web.backends[1]":             22,
		"pools.web.backends[1].address":     23,
		"pools.web.backends[1].checks[0]":   24,
		"pools.web.backends[1].checks[0].p": 25,
		"pools.web.health":                  26,
		"pools.web.health.check":            27,
		"pools.web.health.date":             28,
		"pools.web.health.after":            29,
	}
	for k, line := range want {
		if got[k] != line {
			t.Errorf("line of %s: got %d, want %d", k, got[k], line)
		}
	}
	for _, k := range []string{"fake", "x", "not", "a.b.x", "arr[1].a"} {
		if l, ok := got[k]; ok {
			t.Errorf("found key %s at line %d inside a string or comment", k, l)
		}
	}
}

// TestIndexLinesTerminates feeds the scanner broken input: it must end
// and must not panic.
func TestIndexLinesTerminates(t *testing.T) {
	for _, src := range []string{
		"", "[", "[[", "a", "a =", `a = "`, `a = """`, "a = '''", "a = [", "a = {", "a = [{", `"`, `'`,
		"[a.", "[[a]", "a.b.", "= 1", "a = [1,,]", "a = {b=}", `a = "\`, "\xef\xbb", "]]]",
	} {
		indexLines([]byte(src))
	}
}
