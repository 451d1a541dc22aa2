package config

import "github.com/BurntSushi/toml"

// AdminDefaults reads only the [admin] bind and token_file of a config
// file's content, leniently: the rest of the file may be invalid. The client
// commands (status, backend, reload) use it when the file does not load,
// which is exactly when an operator has just edited it and runs `lbctl
// reload` to learn what is wrong. ok is false when the file has no [admin]
// table or it cannot be parsed even so. The caller reads the file: the
// client commands check who may have written it first.
func AdminDefaults(data []byte) (bind, tokenFile string, ok bool) {
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
