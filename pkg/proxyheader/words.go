package proxyheader

import "fmt"

// byteCount is "1 byte" or "N bytes", for error messages.
func byteCount(n int) string {
	if n == 1 {
		return "1 byte"
	}
	return fmt.Sprintf("%d bytes", n)
}
