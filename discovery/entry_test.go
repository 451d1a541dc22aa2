package discovery

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParseFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		want []string // show() of the set
		err  string   // substring of the error; "" = no error
	}{
		{"defaults", `[{"address": "127.0.0.2:80"}]`, []string{"127.0.0.2:80 w=1"}, ""},
		{"all fields, sorted by address", `[
			{"address": "127.0.0.3:80", "weight": 2, "backup": true},
			{"address": "127.0.0.1:81", "weight": 0, "backup": false},
			{"address": "[::1]:80", "weight": 1000000}
		]`, []string{"127.0.0.1:81 w=0", "127.0.0.3:80 w=2 backup", "[::1]:80 w=1000000"}, ""},
		{"IPv4-mapped address unmapped", `[{"address": "[::ffff:127.0.0.9]:80"}]`, []string{"127.0.0.9:80 w=1"}, ""},
		{"empty array is an empty set", ` [ ] `, []string{}, ""},
		{"empty file", "", nil, "empty file"},
		{"blank file", " \n\t", nil, "empty file"},
		{"null", `null`, nil, "got null"},
		{"not an array", `{"address": "127.0.0.1:80"}`, nil, "cannot unmarshal object"},
		{"truncated", "[\n{\"address\": \"127.0.0.1:80\"},\n{\"addr", nil, "line 3"},
		{"syntax error with its line", "[\n  {\"address\": \"127.0.0.1:80\"},\n  {\"address\" \"127.0.0.2:80\"}\n]", nil, "line 3, column 15"},
		{"data after the array", `[] []`, nil, "data after"},
		{"unknown field", `[{"address": "127.0.0.1:80", "wieght": 2}]`, nil, `unknown field "wieght"`},
		{"address missing", `[{"weight": 2}]`, nil, `entry [0]: "address" is required`},
		{"host name", `[{"address": "localhost:80"}]`, nil, "want IP:port"},
		{"no port", `[{"address": "127.0.0.1"}]`, nil, "want IP:port"},
		{"port 0", `[{"address": "127.0.0.1:0"}]`, nil, "port 0"},
		{"weight too big", `[{"address": "127.0.0.1:80", "weight": 1000001}]`, nil, "out of range"},
		{"weight negative", `[{"address": "127.0.0.1:80", "weight": -1}]`, nil, "out of range"},
		{"weight not an integer", `[{"address": "127.0.0.1:80", "weight": 1.5}]`, nil, "cannot unmarshal number"},
		{"backup not a bool", `[{"address": "127.0.0.1:80", "backup": "yes"}]`, nil, "cannot unmarshal string"},
		{"null entry", `[null]`, nil, `"address" is required`},
		{"duplicate", `[{"address": "127.0.0.1:80"}, {"address": "127.0.0.2:80"}, {"address": "[::ffff:127.0.0.1]:80"}]`,
			nil, "entry [2]: duplicate address 127.0.0.1:80 (first at entry [0])"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := parseFile([]byte(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				if set != nil {
					t.Errorf("set %v with the error", set)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if set == nil || !slices.Equal(show(set), tc.want) {
				t.Errorf("set %v, want %v", show(set), tc.want)
			}
		})
	}
}

func TestParseEtcd(t *testing.T) {
	for _, tc := range []struct {
		name string
		kvs  map[string]string
		want []string
		err  string
	}{
		{"none is an empty set", map[string]string{}, []string{}, ""},
		{"plain and JSON values", map[string]string{
			"/p/b": ` {"address": "127.0.0.2:80", "weight": 3, "backup": true}`,
			"/p/a": "127.0.0.1:80\n",
		}, []string{"127.0.0.1:80 w=1", "127.0.0.2:80 w=3 backup"}, ""},
		{"the first key of one address wins", map[string]string{
			"/p/2": `{"address": "127.0.0.1:80", "weight": 9}`,
			"/p/1": `{"address": "127.0.0.1:80", "weight": 4}`,
		}, []string{"127.0.0.1:80 w=4"}, ""},
		{"malformed value names its key", map[string]string{"/p/a": "127.0.0.1:80", "/p/z": "web-1:80"}, nil, "key /p/z: address"},
		{"malformed JSON", map[string]string{"/p/a": `{"address": "127.0.0.1:80",}`}, nil, "key /p/a: line 1"},
		{"empty value", map[string]string{"/p/a": ""}, nil, "want IP:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvs := map[string][]byte{}
			for k, v := range tc.kvs {
				kvs[k] = []byte(v)
			}
			set, err := parseEtcd(kvs)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if set == nil || !slices.Equal(show(set), tc.want) {
				t.Errorf("set %v, want %v", show(set), tc.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		src  Source
		want string
	}{
		{NewDNS(DNSOptions{Name: "web.internal"}), "dns:web.internal"},
		{NewSRV(SRVOptions{Name: "_web._tcp.internal"}), "srv:_web._tcp.internal"},
		{NewFile(FileOptions{Path: "/etc/lbctl/web.json"}), "file:/etc/lbctl/web.json"},
		{NewEtcd(EtcdOptions{Prefix: "/lbctl/web/"}), "etcd:/lbctl/web/"},
	} {
		if got := tc.src.Name(); got != tc.want {
			t.Errorf("Name() = %q, want %q", got, tc.want)
		}
	}
}

// Whatever the file holds, parseFile never panics, and either fails with no
// set or gives a sorted set of distinct, valid entries.
func FuzzParseFile(f *testing.F) {
	for _, seed := range []string{
		``, `[]`, `null`, `[{"address": "127.0.0.1:80"}]`,
		`[{"address": "[::ffff:127.0.0.1]:80", "weight": 1000000, "backup": true}, {"address": "[::1]:1"}]`,
		`[{"address": "127.0.0.1:80"}, {"address": "127.0.0.1:80"}]`, `[{"address": "127.0.0.1:80"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := parseFile(data)
		if err != nil {
			if set != nil {
				t.Fatalf("a set with the error %v", err)
			}
			return
		}
		if set == nil {
			t.Fatal("nil set without an error")
		}
		for i, e := range set {
			if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr().Is4In6() || e.Weight < 0 || e.Weight > MaxWeight {
				t.Fatalf("bad entry %+v", e)
			}
			if i > 0 && set[i-1].Addr.Compare(e.Addr) >= 0 {
				t.Fatalf("not sorted or duplicate at %d: %v", i, set)
			}
		}
	})
}

// A file of 2,000 backends, as read at every change and every ConfirmEvery.
func BenchmarkParseFile2000(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[\n")
	for i := range 2000 {
		if i > 0 {
			sb.WriteString(",\n")
		}
		fmt.Fprintf(&sb, `  {"address": "10.%d.%d.%d:8080", "weight": %d, "backup": %t}`, i/65536, i/256%256, i%256, 1+i%5, i%10 == 0)
	}
	sb.WriteString("\n]\n")
	data := []byte(sb.String())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseFile(data); err != nil {
			b.Fatal(err)
		}
	}
}
