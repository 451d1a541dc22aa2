package config

import (
	"strconv"
	"unicode/utf8"
)

// BurntSushi/toml keeps key positions private (and for arrays of tables it
// keeps only the last entry's), so this file finds them itself: a small
// scanner that walks a TOML document that has already parsed successfully
// and records, for every key path, the line where the key stands.
//
// Key paths are written the way errors show them: segments joined by ".",
// quoted when they are not bare keys, and array entries as "[i]" counted
// from 0, whether they come from [[arrays.of.tables]] or from inline arrays:
//
//	[[pools.web.backends]]      -> pools.web.backends[0]
//	weight = 3                  -> pools.web.backends[0].weight
//	allow = ["a", "b"]          -> ...allow, ...allow[0], ...allow[1]
//
// The scanner never fails: on input that is not valid TOML it records what
// it can and always terminates.

// lineIndex maps a key path to the 1-based line where the key stands.
type lineIndex map[string]int

// joinKey appends one key segment to a path.
func joinKey(parent, name string) string {
	q := quoteKey(name)
	if parent == "" {
		return q
	}
	return parent + "." + q
}

// indexKey names entry i of the array at path.
func indexKey(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// quoteKey returns name as a bare key when it is one, else quoted.
func quoteKey(name string) string {
	if name == "" {
		return `""`
	}
	for i := 0; i < len(name); i++ {
		if !isBareKeyByte(name[i]) {
			return strconv.Quote(name)
		}
	}
	return name
}

func isBareKeyByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// indexLines scans src and returns the line of every key path in it.
func indexLines(src []byte) lineIndex {
	s := &lineScanner{
		src:      src,
		line:     1,
		lines:    lineIndex{},
		explicit: map[string]bool{},
		arrays:   map[string]int{},
	}
	if len(src) >= 3 && src[0] == 0xef && src[1] == 0xbb && src[2] == 0xbf {
		s.pos = 3 // UTF-8 byte order mark
	}
	s.document()
	return s.lines
}

type lineScanner struct {
	src      []byte
	pos      int
	line     int
	lines    lineIndex
	explicit map[string]bool // paths whose line comes from their own definition
	arrays   map[string]int  // array-of-tables path -> entries seen so far
	context  string          // resolved path of the current [table]
}

// mark records the line of path. A path first seen as a prefix (the
// "pools" of [pools.web]) is overwritten once the key is defined itself.
func (s *lineScanner) mark(path string, line int, explicit bool) {
	if _, ok := s.lines[path]; ok && (!explicit || s.explicit[path]) {
		return
	}
	s.lines[path] = line
	if explicit {
		s.explicit[path] = true
	}
}

func (s *lineScanner) eof() bool { return s.pos >= len(s.src) }

func (s *lineScanner) peek() byte { return s.src[s.pos] }

// skipBlank skips spaces and tabs.
func (s *lineScanner) skipBlank() {
	for !s.eof() && (s.peek() == ' ' || s.peek() == '\t') {
		s.pos++
	}
}

// skipSpace skips white space, newlines and comments.
func (s *lineScanner) skipSpace() {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t', '\r':
			s.pos++
		case '\n':
			s.pos++
			s.line++
		case '#':
			for !s.eof() && s.peek() != '\n' {
				s.pos++
			}
		default:
			return
		}
	}
}

// skipLine skips to the end of the current line (not past the newline).
func (s *lineScanner) skipLine() {
	for !s.eof() && s.peek() != '\n' {
		s.pos++
	}
}

func (s *lineScanner) document() {
	for {
		s.skipSpace()
		if s.eof() {
			return
		}
		start := s.pos
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.context)
			s.skipBlank()
			if !s.eof() && s.peek() != '#' && s.peek() != '\n' && s.peek() != '\r' {
				s.skipLine() // not valid TOML; resynchronise on the next line
			}
		}
		if s.pos == start {
			s.pos++
		}
	}
}

// header handles [table] and [[array.of.tables]].
func (s *lineScanner) header() {
	line := s.line
	s.pos++ // [
	array := !s.eof() && s.peek() == '['
	if array {
		s.pos++
	}
	segs := s.keySegments()
	for !s.eof() && s.peek() == ']' {
		s.pos++
	}
	resolved := ""
	for i, seg := range segs {
		resolved = joinKey(resolved, seg)
		last := i == len(segs)-1
		switch n, isArray := s.arrays[resolved]; {
		case last && array:
			s.arrays[resolved] = n + 1
			s.mark(resolved, line, true)
			resolved = indexKey(resolved, n)
		case isArray && n > 0:
			resolved = indexKey(resolved, n-1)
		}
		s.mark(resolved, line, last)
	}
	s.context = resolved
}

// keyValue handles one "key = value" (also inside inline tables) whose
// key is relative to ctx.
func (s *lineScanner) keyValue(ctx string) {
	line := s.line
	segs := s.keySegments()
	s.skipBlank()
	if len(segs) == 0 || s.eof() || s.peek() != '=' {
		return
	}
	s.pos++ // =
	path := ctx
	for i, seg := range segs {
		path = joinKey(path, seg)
		s.mark(path, line, i == len(segs)-1)
	}
	s.skipBlank()
	s.value(path)
}

// keySegments reads a possibly dotted, possibly quoted key.
func (s *lineScanner) keySegments() []string {
	var segs []string
	for {
		s.skipBlank()
		if s.eof() {
			return segs
		}
		switch c := s.peek(); {
		case c == '"':
			segs = append(segs, decodeBasic(s.basicString()))
		case c == '\'':
			segs = append(segs, s.literalString())
		case isBareKeyByte(c):
			start := s.pos
			for !s.eof() && isBareKeyByte(s.peek()) {
				s.pos++
			}
			segs = append(segs, string(s.src[start:s.pos]))
		default:
			return segs
		}
		s.skipBlank()
		if s.eof() || s.peek() != '.' {
			return segs
		}
		s.pos++
	}
}

// value skips one value, recording the keys inside inline tables and the
// entries of arrays.
func (s *lineScanner) value(path string) {
	if s.eof() {
		return
	}
	switch s.peek() {
	case '"':
		s.basicString()
	case '\'':
		s.literalString()
	case '[':
		s.array(path)
	case '{':
		s.inlineTable(path)
	default: // number, boolean, date: up to the next delimiter
		for !s.eof() {
			switch s.peek() {
			case ',', ']', '}', '#', '\n', '\r':
				return
			}
			s.pos++
		}
	}
}

func (s *lineScanner) array(path string) {
	s.pos++ // [
	for i := 0; ; {
		s.skipSpace()
		if s.eof() {
			return
		}
		switch s.peek() {
		case ']':
			s.pos++
			return
		case ',':
			s.pos++
			continue
		}
		start := s.pos
		elem := indexKey(path, i)
		s.mark(elem, s.line, true)
		s.value(elem)
		i++
		if s.pos == start {
			s.pos++
		}
	}
}

func (s *lineScanner) inlineTable(path string) {
	s.pos++ // {
	for {
		s.skipSpace()
		if s.eof() {
			return
		}
		switch s.peek() {
		case '}':
			s.pos++
			return
		case ',':
			s.pos++
			continue
		}
		start := s.pos
		s.keyValue(path)
		if s.pos == start {
			s.pos++
		}
	}
}

// basicString skips a basic string (double quotes, or three for a
// multi-line one) and returns its raw content (escapes not decoded).
func (s *lineScanner) basicString() string {
	return s.quoted('"', true)
}

// literalString skips a literal string (single quotes, or three for a
// multi-line one) and returns its content.
func (s *lineScanner) literalString() string {
	return s.quoted('\'', false)
}

func (s *lineScanner) quoted(q byte, escapes bool) string {
	multi := s.pos+2 < len(s.src) && s.src[s.pos+1] == q && s.src[s.pos+2] == q
	if multi {
		s.pos += 3
	} else {
		s.pos++
	}
	start := s.pos
	for !s.eof() {
		c := s.peek()
		switch {
		case escapes && c == '\\':
			s.pos++
			if !s.eof() {
				if s.peek() == '\n' {
					s.line++
				}
				s.pos++
			}
			continue
		case c == '\n':
			if !multi {
				return string(s.src[start:s.pos]) // unterminated; leave the newline
			}
			s.line++
		case c == q && !multi:
			end := s.pos
			s.pos++
			return string(s.src[start:end])
		case c == q && s.pos+2 < len(s.src) && s.src[s.pos+1] == q && s.src[s.pos+2] == q:
			s.pos += 3
			// Up to two more quotes belong to the content: """a""""" is `a""`.
			for k := 0; k < 2 && !s.eof() && s.peek() == q; k++ {
				s.pos++
			}
			return string(s.src[start : s.pos-3])
		}
		s.pos++
	}
	return string(s.src[start:])
}

// decodeBasic decodes the escapes of a TOML basic string well enough to
// name a quoted key; malformed escapes are kept as written.
func decodeBasic(raw string) string {
	var b []byte
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 >= len(raw) {
			b = append(b, c)
			continue
		}
		i++
		switch e := raw[i]; e {
		case 'b':
			b = append(b, '\b')
		case 't':
			b = append(b, '\t')
		case 'n':
			b = append(b, '\n')
		case 'f':
			b = append(b, '\f')
		case 'r':
			b = append(b, '\r')
		case 'e':
			b = append(b, 0x1b)
		case '"', '\\':
			b = append(b, e)
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if i+n <= len(raw)-1 {
				if v, err := strconv.ParseUint(raw[i+1:i+1+n], 16, 32); err == nil && utf8.ValidRune(rune(v)) {
					b = utf8.AppendRune(b, rune(v))
					i += n
					continue
				}
			}
			b = append(b, '\\', e)
		default:
			b = append(b, '\\', e)
		}
	}
	return string(b)
}
