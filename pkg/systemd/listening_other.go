//go:build !unix

package systemd

import "os"

// isListening cannot ask the socket here; socket activation is a unix
// (systemd) feature, and activation.Files returns nothing elsewhere.
func isListening(*os.File) (bool, error) { return false, nil }
