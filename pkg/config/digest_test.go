package config

import (
	"crypto/sha256"
	"testing"
)

// TestDigest: Config.Digest is the SHA-256 of the bytes parsed (what
// lbctl_config_file_changed compares the file on disk with).
func TestDigest(t *testing.T) {
	data := []byte("[listeners.l]\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:2\"\n")
	cfg, err := Parse("d.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Digest != sha256.Sum256(data) {
		t.Errorf("Digest %x, want the SHA-256 of the file", cfg.Digest)
	}
	other, err := Parse("d.toml", append(data, "# a comment\n"...))
	if err != nil {
		t.Fatal(err)
	}
	if other.Digest == cfg.Digest {
		t.Error("a file with one more comment has the same digest")
	}
}
