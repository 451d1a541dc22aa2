package discovery

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// fileApply is the file source's promise: a change applies within 2s.
const fileApply = 2 * time.Second

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes data beside path and renames it over path, as editors
// and config managers do.
func replaceFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// The file's life: read at start, edited in place, replaced by a rename,
// broken, fixed, deleted, emptied; each change seen within 2s, and a
// failure never reported as a set.
func TestFileSource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "web.json")
	writeFile(t, path, `[{"address": "127.0.0.1:8001"}, {"address": "127.0.0.2:8002", "weight": 3}]`)
	r := run(t, NewFile(FileOptions{Path: path}))
	r.waitSet(t, 5*time.Second, "127.0.0.1:8001 w=1", "127.0.0.2:8002 w=3")
	m := r.mark()

	t.Run("edit in place", func(t *testing.T) {
		writeFile(t, path, `[{"address": "127.0.0.1:8001"}, {"address": "127.0.0.3:8003", "backup": true}]`)
		d := r.waitSet(t, fileApply, "127.0.0.1:8001 w=1", "127.0.0.3:8003 w=1 backup")
		t.Logf("applied after %v", d)
	})
	t.Run("replace by rename", func(t *testing.T) {
		replaceFile(t, path, `[{"address": "127.0.0.4:8004", "weight": 0}]`)
		d := r.waitSet(t, fileApply, "127.0.0.4:8004 w=0")
		t.Logf("applied after %v", d)
	})
	// No step so far may have emptied the source, not even half-way
	// through the write in place (truncate, then write).
	r.noEmptySet(t, m)

	t.Run("malformed, then fixed", func(t *testing.T) {
		m := r.mark()
		writeFile(t, path, `[{"address": "127.0.0.5:8005"`)
		err, failed := r.waitErr(t, fileApply, m, "web.json: line 1")
		t.Logf("error: %v", err)
		r.errorsOnly(t, failed)
		writeFile(t, path, `[{"address": "127.0.0.5:8005"}]`)
		r.waitSet(t, fileApply, "127.0.0.5:8005 w=1")
	})
	t.Run("deleted, then back", func(t *testing.T) {
		m := r.mark()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		_, failed := r.waitErr(t, fileApply, m, "no such file")
		r.errorsOnly(t, failed)
		replaceFile(t, path, `[{"address": "127.0.0.6:8006"}]`)
		r.waitSet(t, fileApply, "127.0.0.6:8006 w=1")
	})
	t.Run("empty array empties the source", func(t *testing.T) {
		writeFile(t, path, `[]`)
		r.waitSet(t, fileApply)
	})
	t.Run("unchanged set confirmed", func(t *testing.T) {
		m := r.mark()
		lbtest.Until(t, ConfirmEvery+fileApply, func() (bool, string) {
			return len(r.since(m)) > 0, "no result since the file last changed"
		})
		if got := r.since(m)[0]; got.err != nil || len(got.set) != 0 {
			t.Errorf("confirmation %v, want the same empty set again", showResults([]result{got}))
		}
	})
}

// A change that inotify on the file's directory cannot see: the path is a
// symlink to a file in another directory that is edited in place. The stat
// poll applies it within 2s all the same.
func TestFileSourceWithoutEvent(t *testing.T) {
	t.Parallel()
	real := filepath.Join(t.TempDir(), "backends.json")
	writeFile(t, real, `[{"address": "127.0.0.1:8001"}]`)
	path := filepath.Join(t.TempDir(), "web.json")
	if err := os.Symlink(real, path); err != nil {
		t.Fatal(err)
	}
	r := run(t, NewFile(FileOptions{Path: path}))
	r.waitSet(t, 5*time.Second, "127.0.0.1:8001 w=1")
	writeFile(t, real, `[{"address": "127.0.0.1:8001"}, {"address": "127.0.0.2:8002"}]`)
	d := r.waitSet(t, fileApply, "127.0.0.1:8001 w=1", "127.0.0.2:8002 w=1")
	t.Logf("applied after %v", d)
}

// A file that does not exist at start (nor its directory) is a failure
// until it appears.
func TestFileSourceMissingAtStart(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "web.json")
	r := run(t, NewFile(FileOptions{Path: path}))
	r.waitErr(t, 5*time.Second, 0, "no such file")
	r.errorsOnly(t, 0)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, path, `[{"address": "127.0.0.1:8001"}]`)
	r.waitSet(t, fileApply, "127.0.0.1:8001 w=1")
}
