package metrics

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var referenceRow = regexp.MustCompile("^\\| `(lbctl_[a-z0-9_]+)` \\| ([a-z]+) \\|([a-z, ]*)\\|")

// TestReferenceListsEveryMetric: docs/reference.md lists every lbctl_
// metric New registers, with exactly its labels, and no other.
func TestReferenceListsEveryMetric(t *testing.T) {
	data, err := os.ReadFile("../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{}
	for i, l := range strings.Split(string(data), "\n") {
		m := referenceRow.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if _, dup := documented[m[1]]; dup {
			t.Errorf("docs/reference.md:%d: %s listed twice", i+1, m[1])
		}
		labels := strings.Fields(strings.ReplaceAll(m[3], ",", " "))
		sort.Strings(labels)
		documented[m[1]] = strings.Join(labels, " ")
		switch m[2] {
		case "counter", "gauge", "histogram":
		default:
			t.Errorf("docs/reference.md:%d: %s has type %q", i+1, m[1], m[2])
		}
	}
	if len(documented) < 15 {
		t.Fatalf("%d metrics found in docs/reference.md: the table is not in the form the test reads", len(documented))
	}
	for name, labels := range registered(t) {
		if !strings.HasPrefix(name, "lbctl_") {
			continue
		}
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("metric %s (labels: %s) is not documented in docs/reference.md: add a row to the Metrics table", name, strings.Join(labels, ", "))
		case doc != strings.Join(labels, " "):
			t.Errorf("docs/reference.md: %s has labels %q, lbctl registers %q", name, doc, strings.Join(labels, " "))
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("docs/reference.md documents %s, which lbctl does not register", name)
	}
}
