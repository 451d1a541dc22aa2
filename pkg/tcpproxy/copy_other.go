//go:build !linux

package tcpproxy

import "io"

// The portable path: a pooled buffer per read, held only while the bytes are
// in flight is not possible without raw readiness, so the buffer is held
// while waiting. Linux (copy_linux.go) has the zero-copy path.

type platformCopier struct{}

func (d *direction) initPlatform() error { return nil }

func (d *direction) run() error {
	b := bufPool.Get().(*[]byte)
	defer bufPool.Put(b)
	for {
		n, err := d.src.Read(*b)
		if n > 0 {
			if _, werr := d.dst.Write((*b)[:n]); werr != nil {
				return werr
			}
			d.account(n)
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}
