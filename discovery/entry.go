package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"
)

// Entry is one backend a source found.
type Entry struct {
	Addr   netip.AddrPort // the IP unmapped (no ::ffff:10.0.0.1), port > 0
	Weight int            // >= 0; 0 takes no new connections, as in the config
	Backup bool
}

// Source finds backends.
type Source interface {
	// Name is the source's label in status and metrics: "dns:NAME",
	// "srv:NAME", "file:PATH" or "etcd:PREFIX".
	Name() string
	// Run refreshes until ctx is done, then returns having stopped every
	// goroutine and closed every connection and descriptor it opened. After
	// every refresh it calls update exactly once: with the whole set found
	// (sorted by Addr, no duplicates; empty only where an empty answer is
	// legitimate) and a nil error, or with a nil set and the error when the
	// refresh failed (the caller keeps its last good set). A refresh cut
	// short by the end of ctx is not reported. update is never called
	// concurrently and never after Run returned; the set is the caller's to
	// keep. Run must be called at most once.
	Run(ctx context.Context, update func(set []Entry, err error))
}

// ConfirmEvery is how often the watching sources (file, etcd) hand over
// their current result again when nothing changed.
const ConfirmEvery = 5 * time.Second

// MaxWeight is the largest weight a file or an etcd value may give.
const MaxWeight = 1_000_000

// entryJSON is one backend as the file and etcd sources write it.
type entryJSON struct {
	Address *string `json:"address"`
	Weight  *int    `json:"weight"`
	Backup  *bool   `json:"backup"`
}

// entry checks e and turns it into an Entry.
func (e entryJSON) entry() (Entry, error) {
	if e.Address == nil {
		return Entry{}, errors.New(`"address" is required`)
	}
	ap, err := parseAddrPort(*e.Address)
	if err != nil {
		return Entry{}, err
	}
	out := Entry{Addr: ap, Weight: 1}
	if e.Weight != nil {
		if *e.Weight < 0 || *e.Weight > MaxWeight {
			return Entry{}, fmt.Errorf("weight %d out of range 0..%d", *e.Weight, MaxWeight)
		}
		out.Weight = *e.Weight
	}
	if e.Backup != nil {
		out.Backup = *e.Backup
	}
	return out, nil
}

// parseAddrPort parses "IP:port" (port 1..65535) and unmaps the IP.
func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: want IP:port", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: port 0", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// decodeStrict decodes one JSON value from data into v: unknown fields and
// anything after the value are errors.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: data after the JSON value", position(data, dec.InputOffset()))
	}
	return nil
}

// jsonError puts the line and column in front of a syntax or type error.
func jsonError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%s: %w", position(data, syn.Offset), err)
	case errors.As(err, &typ):
		return fmt.Errorf("%s: %w", position(data, typ.Offset), err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: unexpected end of JSON", position(data, int64(len(data))))
	}
	return err
}

// position gives "line L, column C" (both from 1) of byte offset off.
func position(data []byte, off int64) string {
	off = min(max(off, 0), int64(len(data)))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}

// sortEntries sorts set by address.
func sortEntries(set []Entry) {
	slices.SortFunc(set, func(a, b Entry) int { return a.Addr.Compare(b.Addr) })
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff doubles a wait from first up to most.
type backoff struct {
	first, most, next time.Duration
}

func (b *backoff) wait() time.Duration {
	if b.next == 0 {
		b.next = b.first
	}
	d := b.next
	b.next = min(2*b.next, b.most)
	return d
}

func (b *backoff) reset() { b.next = 0 }
