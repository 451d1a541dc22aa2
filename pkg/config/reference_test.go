package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// docs/reference.md documents every configuration key with its default.
// These tests keep it true: the keys it lists are exactly the keys the
// parser asks for (recorded through keyHook while parsing the examples and
// a file with every table), and writing a key with its documented default
// changes nothing in the loaded configuration.

const referenceDoc = "../../docs/reference.md"

// docKey is one row of the reference's configuration tables.
type docKey struct {
	key, def string // def: the default cell as written
	line     int
}

var docRow = regexp.MustCompile("^\\| `([a-z_.\\[\\]A-Z]+)` \\|[^|]*\\| ([^|]*) \\|")

// referenceKeys reads the configuration tables of docs/reference.md.
func referenceKeys(t *testing.T) []docKey {
	t.Helper()
	data, err := os.ReadFile(referenceDoc)
	if err != nil {
		t.Fatal(err)
	}
	var out []docKey
	in := false
	for i, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "## ") {
			in = l == "## Configuration"
		}
		if m := docRow.FindStringSubmatch(l); in && m != nil {
			out = append(out, docKey{key: m[1], def: strings.TrimSpace(m[2]), line: i + 1})
		}
	}
	if len(out) < 40 {
		t.Fatalf("%s: %d configuration keys found, the tables are not where the test looks (## Configuration)", referenceDoc, len(out))
	}
	return out
}

var (
	refNamedTable = regexp.MustCompile(`^(listeners|pools)\.[^.\[]+`)
	refArrayIndex = regexp.MustCompile(`\[\d+\]`)
)

// normalize writes a key path as the reference does: listeners.NAME.bind,
// pools.NAME.backends[].weight.
func normalize(path string) string {
	return refArrayIndex.ReplaceAllString(refNamedTable.ReplaceAllString(path, "$1.NAME"), "[]")
}

// everyTable is a valid file with every table and array of tables once, so
// that the parser asks for each of their keys.
const everyTable = `
[admin]
[log]
[listeners.tls]
bind = "127.0.0.1:1443"
pool = "p"
  [[listeners.tls.routes]]
  sni = ["a.example.com"]
  pool = "p"
[pools.p]
algorithm = "maglev"
  [[pools.p.backends]]
  address = "127.0.0.1:1"
  [[pools.p.discover]]
  type = "dns"
  name = "x.internal"
  port = 80
  [pools.p.health]
  check = "https"
`

// schemaKeys parses the examples and everyTable and returns every key path
// the parser asked for, normalized, that is not a table (a path other
// keys are under).
func schemaKeys(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	keyHook = func(p string) { seen[normalize(p)] = true }
	defer func() { keyHook = nil }()
	files, _ := filepath.Glob("../../examples/*.toml")
	files = append(files, "testdata/spec.toml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(f, data); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if _, err := Parse("every-table.toml", []byte(everyTable)); err != nil {
		t.Fatalf("the test's file with every table: %v", err)
	}
	var keys []string
	for k := range seen {
		table := false
		for o := range seen {
			if strings.HasPrefix(o, k+".") || strings.HasPrefix(o, k+"[].") {
				table = true
				break
			}
		}
		if !table {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// TestReferenceListsEveryKey: every key the parser knows is in
// docs/reference.md, and every key listed there is one the parser knows.
func TestReferenceListsEveryKey(t *testing.T) {
	doc := referenceKeys(t)
	schema := schemaKeys(t)
	documented := map[string]bool{}
	for _, d := range doc {
		if documented[d.key] {
			t.Errorf("%s:%d: %s is listed twice", referenceDoc, d.line, d.key)
		}
		documented[d.key] = true
	}
	for _, k := range schema {
		if !documented[k] {
			// A table the examples never fill: its keys may be listed.
			sub := false
			for d := range documented {
				if strings.HasPrefix(d, k+".") || strings.HasPrefix(d, k+"[].") {
					sub = true
				}
			}
			if !sub {
				t.Errorf("key %s is not documented in %s: add a row for it (key, type, default, meaning)", k, referenceDoc)
			}
		}
	}
	for _, d := range doc {
		if !slices.Contains(schema, d.key) {
			t.Errorf("%s:%d: %s is documented but the configuration has no such key (or no example or test file uses its table: add the table to everyTable in reference_test.go)",
				referenceDoc, d.line, d.key)
		}
	}
}

// defaultBases are valid files with a marker line "# @TABLE" in every
// table; a key with its default replaces its table's marker (so no line
// number moves). Several bases, because some keys belong to one protocol,
// algorithm or check kind only.
var defaultBases = []string{
	`# @
[log]
# @log
[admin]
# @admin
[listeners.l]
bind = "127.0.0.1:1080"
pool = "p"
# @listeners.NAME
[pools.p]
# @pools.NAME
  [[pools.p.backends]]
  address = "127.0.0.1:1"
  # @pools.NAME.backends[]
  [[pools.p.discover]]
  type = "dns"
  name = "x.internal"
  port = 80
  # @pools.NAME.discover[]
  [pools.p.health]
  # @pools.NAME.health
`,
	`[listeners.u]
protocol = "udp"
bind = "127.0.0.1:1053"
pool = "p"
# @listeners.NAME
[pools.p]
  [[pools.p.backends]]
  address = "127.0.0.1:1"
`,
	`[listeners.tls]
bind = "127.0.0.1:1443"
pool = "p"
# @listeners.NAME
  [[listeners.tls.routes]]
  sni = ["a.example.com"]
  pool = "p"
[pools.p]
algorithm = "maglev"
# @pools.NAME
  [[pools.p.backends]]
  address = "127.0.0.1:1"
  [pools.p.health]
  check = "https"
  # @pools.NAME.health
`,
	`[listeners.l]
bind = "127.0.0.1:1080"
pool = "p"
[pools.p]
  [[pools.p.backends]]
  address = "127.0.0.1:1"
[bgp]
asn = 65010
router_id = "10.0.0.21"
# @bgp
  [[bgp.peers]]
  address = "10.0.0.1"
  asn = 65000
  # @bgp.peers[]
`,
}

var firstCode = regexp.MustCompile("^`([^`]+)`")

// TestReferenceDefaults: for every key whose documented default is a TOML
// value (a cell that starts with one in backquotes), a file that writes
// the key with that value loads into the same configuration as the file
// without it.
func TestReferenceDefaults(t *testing.T) {
	load := func(text string) (*Config, error) {
		cfg, err := Parse("defaults.toml", []byte(text))
		if cfg != nil {
			cfg.Digest = [32]byte{}
		}
		return cfg, err
	}
	checked := 0
	for _, d := range referenceKeys(t) {
		m := firstCode.FindStringSubmatch(d.def)
		if m == nil {
			continue // required, or a default that is not one value
		}
		table, leaf := "", d.key
		if i := strings.LastIndex(d.key, "."); i >= 0 {
			table, leaf = d.key[:i], d.key[i+1:]
		}
		marker := "# @" + table + "\n"
		var problems, differ []string
		ok := false
		for i, base := range defaultBases {
			j := strings.Index(base, marker)
			if j < 0 {
				continue
			}
			with := base[:j] + leaf + " = " + m[1] + "\n" + base[j+len(marker):]
			want, err := load(base)
			if err != nil {
				t.Fatalf("base %d does not load: %v", i, err)
			}
			got, err := load(with)
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			if !sameValue(reflect.ValueOf(got), reflect.ValueOf(want)) {
				differ = append(differ, "with:    "+dump(got)+"\n  without: "+dump(want))
				continue
			}
			ok = true
			break
		}
		if !ok && len(differ) > 0 {
			t.Errorf("%s:%d: %s = %s is not the default: the configuration loaded differs from one without the key\n  %s",
				referenceDoc, d.line, d.key, m[1], strings.Join(differ, "\n  "))
			continue
		}
		if !ok {
			t.Errorf("%s:%d: %s = %s: no base file of the test accepts it (add one to defaultBases):\n  %s",
				referenceDoc, d.line, d.key, m[1], strings.Join(problems, "\n  "))
			continue
		}
		checked++
	}
	if checked < 30 {
		t.Errorf("only %d defaults checked", checked)
	}
}

// sameValue is reflect.DeepEqual but for slices and maps, where nil and
// empty are the same (a key written as [] and a key left out).
func sameValue(a, b reflect.Value) bool {
	if a.IsValid() != b.IsValid() {
		return false
	}
	if !a.IsValid() {
		return true
	}
	switch a.Kind() {
	case reflect.Slice, reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			if !sameValue(a.MapIndex(k), b.MapIndex(k)) {
				return false
			}
		}
		return true
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameValue(a.Elem(), b.Elem())
	case reflect.Struct:
		for i := range a.NumField() {
			if !sameValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return a.IsNil() == b.IsNil()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return a.Uint() == b.Uint()
	case reflect.Float32, reflect.Float64:
		return a.Float() == b.Float()
	case reflect.String:
		return a.String() == b.String()
	}
	return false
}
