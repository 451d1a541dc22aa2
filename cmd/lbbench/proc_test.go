package main

import (
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		ppid    int
		cpu     float64
		wantErr bool
	}{
		{"plain", "42 (nginx) S 7 42 42 0 -1 4194624 100 0 0 0 150 50 0 0 20 0 1 0 1 1 1", 7, 2.0, false},
		{"command with spaces and parens", "42 (a) b (c)) R 1 42 42 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1", 1, 0.07, false},
		{"truncated", "42 (x) S 1 2", 0, 0, true},
		{"no command", "garbage", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (st.ppid != tt.ppid || st.cpuSeconds != tt.cpu) {
				t.Errorf("got %+v, want ppid %d cpu %v", st, tt.ppid, tt.cpu)
			}
		})
	}
}

func TestParseVmRSS(t *testing.T) {
	rss, err := parseVmRSS([]byte("Name:\tx\nVmPeak:\t 999 kB\nVmRSS:\t    1234 kB\nThreads: 1\n"))
	if err != nil || rss != 1234*1024 {
		t.Errorf("got %d, %v; want %d", rss, err, 1234*1024)
	}
	if _, err := parseVmRSS([]byte("Name: kthread\n")); err == nil {
		t.Error("no error without a VmRSS line")
	}
}

func TestTreeMemSeesOwnDescriptors(t *testing.T) {
	_, before, err := treeMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	rss, after, err := treeMem(os.Getpid())
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if after != before+1 {
		t.Errorf("fds %d after opening one, %d before", after, before)
	}
	if rss <= 0 {
		t.Errorf("rss %d", rss)
	}
	if treeCPU(os.Getpid()) < 0 {
		t.Error("negative CPU time")
	}
}
