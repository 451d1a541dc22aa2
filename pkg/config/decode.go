package config

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// This file walks the generic map that BurntSushi/toml decodes into, one
// table at a time, with typed getters that record a located error instead
// of stopping at the first one. A getter marks its key as known; whatever
// is left when a table is finished is an unknown key.

// decoder collects the errors of one file.
type decoder struct {
	file  string
	lines lineIndex
	errs  Errors
}

func (d *decoder) add(path string, line int, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: path, Msg: fmt.Sprintf(format, args...)})
}

// table is one TOML table being decoded.
type table struct {
	d     *decoder
	path  string
	line  int
	m     map[string]any
	known map[string]bool
}

func (d *decoder) root(m map[string]any) *table {
	return &table{d: d, m: m, known: map[string]bool{}}
}

// newTable makes the table found at path; line is the fallback for keys
// whose own line is unknown.
func (d *decoder) newTable(path string, fallback int, m map[string]any) *table {
	line, ok := d.lines[path]
	if !ok {
		line = fallback
	}
	return &table{d: d, path: path, line: line, m: m, known: map[string]bool{}}
}

// keyPath is the full path of key in t.
func (t *table) keyPath(key string) string { return joinKey(t.path, key) }

// keyLine is the line of key in t, or of t itself when the key is absent.
func (t *table) keyLine(key string) int {
	if l, ok := t.d.lines[t.keyPath(key)]; ok {
		return l
	}
	return t.line
}

// errf records a problem with key (an empty key means the table itself).
func (t *table) errf(key string, format string, args ...any) {
	if key == "" {
		t.d.add(t.path, t.line, format, args...)
		return
	}
	t.d.add(t.keyPath(key), t.keyLine(key), format, args...)
}

func (t *table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// get returns the raw value of key and marks the key as known.
func (t *table) get(key string) (any, bool) {
	v, ok := t.m[key]
	t.known[key] = true
	if keyHook != nil {
		keyHook(t.keyPath(key))
	}
	return v, ok
}

// keyHook, when set (by a test, before parsing), is called with the path
// of every key the decoder asks for, present or not: the schema, as
// docs/reference.md documents it (reference_test.go).
var keyHook func(path string)

// str returns the string at key; ok is false when it is absent or not a string.
func (t *table) str(key string) (string, bool) {
	v, ok := t.get(key)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	if !ok {
		t.errf(key, "expected a string, got %s", tomlType(v))
	}
	return s, ok
}

// integer returns the integer at key, which must be at least min.
func (t *table) integer(key string, min int64) (int, bool) {
	v, ok := t.get(key)
	if !ok {
		return 0, false
	}
	n, ok := v.(int64)
	if !ok {
		t.errf(key, "expected an integer, got %s", tomlType(v))
		return 0, false
	}
	switch {
	case n < 0 && min == 0:
		t.errf(key, "must not be negative, got %d", n)
		return 0, false
	case n < min:
		t.errf(key, "must be at least %d, got %d", min, n)
		return 0, false
	}
	return int(n), true
}

// number returns the non-negative integer or float at key.
func (t *table) number(key string) (float64, bool) {
	v, ok := t.get(key)
	if !ok {
		return 0, false
	}
	var f float64
	switch n := v.(type) {
	case int64:
		f = float64(n)
	case float64:
		f = n
	default:
		t.errf(key, "expected a number, got %s", tomlType(v))
		return 0, false
	}
	if f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		t.errf(key, "must be a number >= 0, got %v", v)
		return 0, false
	}
	return f, true
}

func (t *table) boolean(key string) (bool, bool) {
	v, ok := t.get(key)
	if !ok {
		return false, false
	}
	b, ok := v.(bool)
	if !ok {
		t.errf(key, "expected a boolean, got %s", tomlType(v))
	}
	return b, ok
}

// duration returns the Go duration string at key; it must not be negative,
// and must be greater than zero when positive is set.
func (t *table) duration(key string, positive bool) (time.Duration, bool) {
	v, ok := t.get(key)
	if !ok {
		return 0, false
	}
	s, ok := v.(string)
	if !ok {
		t.errf(key, "expected a duration string such as \"2s\", got %s", tomlType(v))
		return 0, false
	}
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil:
		t.errf(key, "invalid duration %q", s)
		return 0, false
	case dur < 0:
		t.errf(key, "negative duration %q", s)
		return 0, false
	case dur == 0 && positive:
		t.errf(key, "must be greater than 0, got %q", s)
		return 0, false
	}
	return dur, true
}

// oneOf returns the string at key, which must be one of allowed.
func (t *table) oneOf(key string, allowed ...string) (string, bool) {
	s, ok := t.str(key)
	if !ok {
		return "", false
	}
	for _, a := range allowed {
		if s == a {
			return s, true
		}
	}
	t.errf(key, "unknown %s %q (want %s)", strings.ReplaceAll(key, "_", " "), s, orList(allowed))
	return "", false
}

// sub returns the table at key.
func (t *table) sub(key string) (*table, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.errf(key, "expected a table, got %s", tomlType(v))
		return nil, false
	}
	return t.d.newTable(t.keyPath(key), t.keyLine(key), m), true
}

// tables returns the array of tables at key, written either as
// [[key]] sections or as an inline array of inline tables.
func (t *table) tables(key string) ([]*table, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	path, line := t.keyPath(key), t.keyLine(key)
	var out []*table
	switch a := v.(type) {
	case []map[string]any:
		for i, m := range a {
			out = append(out, t.d.newTable(indexKey(path, i), line, m))
		}
	case []any:
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				t.d.add(indexKey(path, i), lineOr(t.d.lines, indexKey(path, i), line),
					"expected a table, got %s", tomlType(e))
				continue
			}
			out = append(out, t.d.newTable(indexKey(path, i), line, m))
		}
	default:
		t.errf(key, "expected an array of tables, got %s", tomlType(v))
		return nil, false
	}
	return out, true
}

// item is one entry of an array with its location.
type item struct {
	path string
	line int
	v    any
}

// array returns the entries of the array at key.
func (t *table) array(key string) ([]item, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	a, ok := v.([]any)
	if !ok {
		t.errf(key, "expected an array, got %s", tomlType(v))
		return nil, false
	}
	path, line := t.keyPath(key), t.keyLine(key)
	items := make([]item, len(a))
	for i, e := range a {
		p := indexKey(path, i)
		items[i] = item{path: p, line: lineOr(t.d.lines, p, line), v: e}
	}
	return items, true
}

// namedTable is one entry of a table of named tables ([listeners.NAME]).
type namedTable struct {
	name string
	t    *table
}

// named returns the entries of a table of named tables in the order they
// appear in the file; entries that are not tables are reported.
func (t *table) named() []namedTable {
	keys := make([]string, 0, len(t.m))
	for k := range t.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		li, lj := t.keyLine(keys[i]), t.keyLine(keys[j])
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	var out []namedTable
	for _, k := range keys {
		if sub, ok := t.sub(k); ok {
			out = append(out, namedTable{name: k, t: sub})
		}
	}
	return out
}

// finish reports every key of t that no getter asked for.
func (t *table) finish() {
	var unknown []string
	for k := range t.m {
		if !t.known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		if s := suggest(k, t.known); s != "" {
			t.errf(k, "unknown key (did you mean %q?)", s)
		} else {
			t.errf(k, "unknown key")
		}
	}
}

func lineOr(lines lineIndex, path string, fallback int) int {
	if l, ok := lines[path]; ok {
		return l
	}
	return fallback
}

// tomlType names the TOML type of a decoded value for messages.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case map[string]any:
		return "table"
	case []any, []map[string]any:
		return "array"
	case time.Time:
		return "datetime"
	default:
		return fmt.Sprintf("%T", v) // toml.LocalDate and friends
	}
}

// orList formats {a, b, c} as "a, b or c".
func orList(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// suggest returns the known key closest to k when it looks like a typo.
func suggest(k string, known map[string]bool) string {
	best, bestDist := "", 3
	for cand := range known {
		if d := editDistance(k, cand); d < bestDist || d == bestDist && d < 3 && cand < best {
			best, bestDist = cand, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, capped for long inputs.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
