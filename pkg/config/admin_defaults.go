package config

import (
	"os"

	"github.com/BurntSushi/toml"
)

// AdminDefaults reads only the [admin] bind and token_file of the file at
// path, leniently: the rest of the file may be invalid. The client
// commands (status, backend, reload) use it when the file does not load,
// which is exactly when an operator has just edited it and runs `lbctl
// reload` to learn what is wrong. ok is false when the file has no [admin]
// table or it cannot be read even so.
func AdminDefaults(path string) (bind, tokenFile string, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", false
	}
	var f struct {
		Admin *struct {
			Bind      string `toml:"bind"`
			TokenFile string `toml:"token_file"`
		} `toml:"admin"`
	}
	if _, err := toml.Decode(string(data), &f); err != nil || f.Admin == nil {
		return "", "", false
	}
	bind = DefaultAdminBind
	if f.Admin.Bind != "" {
		ap, err := renderBind(f.Admin.Bind)
		if err != nil {
			return "", "", false
		}
		bind = ap.String()
	}
	return bind, f.Admin.TokenFile, true
}
