package server

// diff.go: what a reload changed, for its log line. One entry per
// listener, pool or top-level setting, naming every key that changed with
// its old and new value as the file writes them:
//
//	pool web: backend 10.0.0.3:80 added, weight of 10.0.0.1:80 3 -> 5
//	listener api: idle_timeout 1m -> 5m
//	log.level info -> debug
//
// Keys are found by reflection over the config types (a field's name in
// snake case is its TOML key), so a key added to the config shows up here
// without a change to this file.

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/lbctl/lbctl/pkg/config"
)

// diff describes what changed between two configurations, for the reload
// log line: sorted, one entry per listener, pool or top-level key.
func diff(old, cur *config.Config) []string {
	var out []string
	ol := map[string]*config.Listener{}
	for _, l := range old.Listeners {
		ol[l.Name] = l
	}
	for _, l := range cur.Listeners {
		o, ok := ol[l.Name]
		delete(ol, l.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("listener %s: added (%s %s, pool %s)", l.Name, l.Protocol, l.Bind, l.Pool))
		default:
			if ch := fieldChanges("", reflect.ValueOf(*o), reflect.ValueOf(*l), "Name", "BindTemplate"); len(ch) > 0 {
				out = append(out, "listener "+l.Name+": "+strings.Join(ch, ", "))
			}
		}
	}
	for name := range ol {
		out = append(out, "listener "+name+": removed")
	}
	for name, p := range cur.Pools {
		o, ok := old.Pools[name]
		if !ok {
			n := fmt.Sprintf("%d backends", len(p.Backends))
			if len(p.Backends) == 1 {
				n = "1 backend"
			}
			out = append(out, fmt.Sprintf("pool %s: added (%s)", name, n))
			continue
		}
		if ch := poolChanges(o, p); len(ch) > 0 {
			out = append(out, "pool "+name+": "+strings.Join(ch, ", "))
		}
	}
	for name := range old.Pools {
		if _, ok := cur.Pools[name]; !ok {
			out = append(out, "pool "+name+": removed")
		}
	}
	for _, ch := range fieldChanges("", reflect.ValueOf(*old), reflect.ValueOf(*cur),
		"File", "Digest", "Listeners", "Pools") {
		if strings.HasPrefix(ch, "admin") {
			// The admin API is set up once per process.
			ch += " (takes effect at the next restart)"
		}
		out = append(out, ch)
	}
	sort.Strings(out)
	return out
}

// poolChanges lists what changed in a pool: its settings, its static
// backends by address, its discovery sources by name.
func poolChanges(o, p *config.Pool) []string {
	out := fieldChanges("", reflect.ValueOf(*o), reflect.ValueOf(*p), "Name", "Protocol", "Backends", "Discover")
	ob := map[string]config.Backend{}
	for _, b := range o.Backends {
		ob[b.Address] = b
	}
	for _, b := range p.Backends {
		prev, ok := ob[b.Address]
		delete(ob, b.Address)
		if !ok {
			out = append(out, "backend "+b.Address+" added")
			continue
		}
		for _, ch := range fieldChanges("", reflect.ValueOf(prev), reflect.ValueOf(b), "Address") {
			key, change, _ := strings.Cut(ch, " ")
			out = append(out, key+" of "+b.Address+" "+change)
		}
	}
	for _, b := range o.Backends {
		if _, gone := ob[b.Address]; gone {
			out = append(out, "backend "+b.Address+" removed")
		}
	}
	od := map[string]config.Discover{}
	for _, d := range o.Discover {
		od[d.Source()] = d
	}
	for _, d := range p.Discover {
		prev, ok := od[d.Source()]
		delete(od, d.Source())
		if !ok {
			out = append(out, "discover "+d.Source()+" added")
			continue
		}
		for _, ch := range fieldChanges("", reflect.ValueOf(prev), reflect.ValueOf(d), "Line") {
			out = append(out, "discover "+d.Source()+" "+ch)
		}
	}
	for _, d := range o.Discover {
		if _, gone := od[d.Source()]; gone {
			out = append(out, "discover "+d.Source()+" removed")
		}
	}
	return out
}

// fieldChanges compares two values of one struct type field by field
// (exported fields, but skip), as "key old -> new"; a nested struct's
// keys are prefixed with its own ("health.interval 2s -> 5s"), a struct
// behind a pointer that appears or goes is "key added" / "key removed".
func fieldChanges(prefix string, a, b reflect.Value, skip ...string) []string {
	var out []string
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || contains(skip, f.Name) {
			continue
		}
		key := prefix + snake(f.Name)
		x, y := a.Field(i), b.Field(i)
		if reflect.DeepEqual(x.Interface(), y.Interface()) {
			continue
		}
		if x.Kind() == reflect.Pointer && x.Type().Elem().Kind() == reflect.Struct && !hasString(x) {
			switch {
			case x.IsNil():
				out = append(out, key+" added")
				continue
			case y.IsNil():
				out = append(out, key+" removed")
				continue
			}
			x, y = x.Elem(), y.Elem()
		}
		if x.Kind() == reflect.Struct && x.Type() != reflect.TypeFor[time.Time]() && !hasString(x) {
			out = append(out, fieldChanges(key+".", x, y)...)
			continue
		}
		if isStructSlice(x) {
			out = append(out, key+" changed")
			continue
		}
		out = append(out, key+" "+show(x)+" -> "+show(y))
	}
	return out
}

// show writes a config value the way the file does: durations short
// ("1m", not "1m0s"), byte strings quoted, lists in brackets.
func show(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case time.Duration:
		return shortDuration(x)
	case []byte:
		return fmt.Sprintf("%q", x)
	case string:
		if x == "" {
			return `""`
		}
		return x
	case fmt.Stringer:
		if v.Kind() != reflect.Pointer || !v.IsNil() {
			return x.String()
		}
	}
	if v.Kind() == reflect.Slice {
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = show(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "none"
		}
		return show(v.Elem())
	}
	return fmt.Sprint(v.Interface())
}

// shortDuration is d as a Go duration string without zero units: 1m, 1h30m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// snake turns a Go field name into its TOML key: IdleTimeout ->
// idle_timeout, TLSInspectTimeout -> tls_inspect_timeout.
func snake(name string) string {
	r := []rune(name)
	var b strings.Builder
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 &&
			(unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1]) || (i+1 < len(r) && unicode.IsLower(r[i+1]))) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

// hasString reports whether v's type prints itself (a String method), as
// netip.Prefix does: it is then one value, not a table.
func hasString(v reflect.Value) bool {
	_, ok := v.Interface().(fmt.Stringer)
	return ok
}

func isStructSlice(v reflect.Value) bool {
	if v.Kind() != reflect.Slice {
		return false
	}
	e := v.Type().Elem()
	if e.Kind() == reflect.Pointer {
		e = e.Elem()
	}
	return e.Kind() == reflect.Struct && !e.Implements(reflect.TypeFor[fmt.Stringer]()) &&
		!reflect.PointerTo(e).Implements(reflect.TypeFor[fmt.Stringer]())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
