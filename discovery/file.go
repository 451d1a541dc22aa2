package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

const (
	// fileSettle is how long a burst of events on the file must be quiet
	// before it is read (an editor's truncate+write+chmod is one change)...
	fileSettle = 100 * time.Millisecond
	// ...but a file written without pause is read at least this often.
	fileSettleMost = time.Second
	// filePoll is the period of the stat check that catches what inotify
	// does not report (a lost event, a symlink swapped elsewhere, a watch
	// that could not be set).
	filePoll = time.Second
	// maxFileSize bounds what is read: 2,000 backends take about 150 KB.
	maxFileSize = 16 << 20
)

// FileOptions configure a file source.
type FileOptions struct {
	Path string // the JSON file; its directory is watched
}

// NewFile returns a source that reads the JSON array of backends at
// opts.Path and reads it again whenever it changes.
func NewFile(opts FileOptions) Source {
	return &fileSource{opts: opts}
}

type fileSource struct{ opts FileOptions }

func (s *fileSource) Name() string { return "file:" + s.opts.Path }

func (s *fileSource) Run(ctx context.Context, update func([]Entry, error)) {
	path := filepath.Clean(s.opts.Path)
	dir := filepath.Dir(path)

	// inotify is the fast path; without it (out of watches or instances)
	// the stat poll still applies every change within filePoll.
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	w, err := fsnotify.NewWatcher()
	if err == nil {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}
	watching := false
	watch := func() {
		if w != nil && !watching {
			watching = w.Add(dir) == nil
		}
	}
	watch()

	var seen stamp         // the file as it was before the last read
	var lastRead time.Time // when update was last called
	read := func() {
		seen = statFile(path)
		set, err := readFile(path)
		lastRead = time.Now()
		update(set, err)
	}
	read()

	poll := time.NewTicker(filePoll)
	defer poll.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var settling bool
	var burstStart time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Name == dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				watching = false // the directory itself is gone; poll re-adds it
			}
			if filepath.Clean(ev.Name) != path {
				continue
			}
			now := time.Now()
			if !settling {
				settling, burstStart = true, now
			}
			settle.Reset(min(fileSettle, max(burstStart.Add(fileSettleMost).Sub(now), 0)))
		case _, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			// The kernel's event queue overflowed: look now.
			if !settling {
				settling, burstStart = true, time.Now()
				settle.Reset(0)
			}
		case <-settle.C:
			settling = false
			read()
		case <-poll.C:
			watch()
			if !settling && (statFile(path) != seen || time.Since(lastRead) >= ConfirmEvery) {
				read()
			}
		}
	}
}

// stamp is what a stat says about a file; a different stamp means the file
// may have changed. Comparable with ==.
type stamp struct {
	err   string // the stat error, "" when it succeeded
	dev   uint64
	ino   uint64
	size  int64
	mtime int64
	mode  os.FileMode
}

func statFile(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{err: err.Error()}
	}
	dev, ino := fileID(fi)
	return stamp{dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
}

// readFile reads and parses the file at path.
func readFile(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileSize)
	}
	set, err := parseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return set, nil
}

// parseFile parses a JSON array of backends. An empty array is an empty
// set; an empty file is an error (it is what a rewrite in place looks like
// half-way through). A duplicate address is an error: one author writes
// the whole file, and a duplicate is a mistake to show, not to guess at.
func parseFile(data []byte) ([]Entry, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty file (a file listing no backend holds [])")
	}
	var list []entryJSON
	if err := decodeStrict(data, &list); err != nil {
		return nil, err
	}
	if list == nil {
		return nil, errors.New("want a JSON array of backends, got null")
	}
	set := make([]Entry, 0, len(list))
	first := make(map[netip.AddrPort]int, len(list))
	for i, e := range list {
		en, err := e.entry()
		if err != nil {
			return nil, fmt.Errorf("entry [%d]: %w", i, err)
		}
		if j, dup := first[en.Addr]; dup {
			return nil, fmt.Errorf("entry [%d]: duplicate address %s (first at entry [%d])", i, en.Addr, j)
		}
		first[en.Addr] = i
		set = append(set, en)
	}
	sortEntries(set)
	return set, nil
}
