package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/spf13/cobra"
)

const defaultAdmin = "127.0.0.1:9900"

// clientFlags are the flags of the commands that talk to a running lbctl.
type clientFlags struct {
	socket, admin, tokenFile, config string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.socket, "socket", "", "control socket to talk to (default: the control_socket of the config found, when it exists)")
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin API address, used when no control socket is found (default: [admin] bind of the config found, else "+defaultAdmin+")")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (default: [admin] token_file of the config found)")
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file to take the defaults from")
}

// client returns a client for the running lbctl. It is reached, in this
// order, through: --socket; --admin; the control socket of the config
// found (control_socket, by default $RUNTIME_DIRECTORY/lbctl.sock) when
// that file exists; the config's [admin] bind; 127.0.0.1:9900. The control
// socket comes before [admin] bind because a reload never moves the admin
// API but always moves the control socket: after an edit of [admin], the
// file names an address the running process does not listen on yet.
func (f *clientFlags) client() (*adminClient, error) {
	if f.socket != "" {
		return controlClient(f.socket), nil
	}
	admin, tokenFile, adminFrom := f.admin, f.tokenFile, ""
	sock := config.DefaultControlSocket()
	if admin == "" || tokenFile == "" {
		// Read leniently: the file may have just been edited into an
		// invalid state, and `lbctl reload` must still reach the server to
		// report what is wrong with it.
		// A config another user could have written is refused (see
		// trust.go); one that cannot be read gives no defaults.
		if path, err := findConfig(f.config); err == nil {
			data, err := readTrusted("config file", path)
			if unsafe := asUnsafe(err); unsafe != nil {
				return nil, unsafe
			}
			if err == nil {
				sock = config.ControlSocketOf(path, data)
			}
			if bind, tf, ok := config.AdminDefaults(data); err == nil && ok {
				if admin == "" {
					admin, adminFrom = bind, path
				}
				if tokenFile == "" {
					tokenFile = tf
				}
			}
		}
	}
	if f.admin == "" {
		// The file's socket; else systemd's default, which the running
		// process still serves when control_socket was just edited in.
		for _, s := range []string{sock, config.DefaultControlSocket()} {
			if usableSocket(s) {
				return controlClient(s), nil
			}
		}
	}
	if admin == "" {
		admin = defaultAdmin
	}
	c := &adminClient{base: adminBase(admin), http: &http.Client{Timeout: 30 * time.Second},
		where: admin + " (the admin API)", adminFrom: adminFrom}
	if tokenFile != "" {
		b, err := readTrusted("token file", tokenFile)
		if unsafe := asUnsafe(err); unsafe != nil {
			return nil, unsafe
		}
		if err != nil {
			return nil, withCode(exitFailure, fmt.Errorf("token file: %w", err))
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// asUnsafe turns the refusal of a file another user could have written
// into a config problem (exit 2), and returns nil for any other err.
func asUnsafe(err error) error {
	var unsafe *unsafeFileError
	if errors.As(err, &unsafe) {
		return withCode(exitUsage, err)
	}
	return nil
}

// adminBase turns --admin (host:port, or a URL) into the API's base URL.
// An unspecified host (a bind of 0.0.0.0 or [::]) means this machine.
func adminBase(admin string) string {
	if strings.Contains(admin, "://") {
		return strings.TrimSuffix(admin, "/")
	}
	if host, port, err := net.SplitHostPort(admin); err == nil {
		switch host {
		case "", "0.0.0.0":
			admin = net.JoinHostPort("127.0.0.1", port)
		case "::":
			admin = net.JoinHostPort("::1", port)
		}
	}
	return "http://" + admin
}

type adminClient struct {
	base, token string
	http        *http.Client
	where       string // "ADDR (the admin API)" or "PATH (the control socket)"
	adminFrom   string // the config file that named the admin address, if one did
}

// controlClient talks to the control socket at path: no token, any Host.
func controlClient(path string) *adminClient {
	var d net.Dialer
	return &adminClient{base: "http://lbctl", where: path + " (the control socket)", http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// usableSocket reports whether path names a unix socket this user may
// connect to (write permission; socket_unix.go). A user who may not falls
// back to the admin API.
func usableSocket(path string) bool {
	fi, err := os.Stat(path)
	return path != "" && err == nil && fi.Mode().Type() == os.ModeSocket && mayConnect(path)
}

// unreachableError is a request that got no answer: nothing listens where
// the client looked, or the connection failed.
type unreachableError struct {
	where, hint string
	err         error
}

func (e *unreachableError) Error() string {
	return "cannot reach lbctl at " + e.where + ": " + e.err.Error() + e.hint
}

func (e *unreachableError) Unwrap() error { return e.err }

// do sends a request and decodes a 2xx JSON answer into out. Other answers
// become errors carrying the API's message.
func (c *adminClient) do(method, path string, out any) error {
	return c.send(method, path, nil, out)
}

// send is do with in, when not nil, sent as the JSON body.
func (c *adminClient) send(method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, reqBody)
	if err != nil {
		return err
	}
	if method != http.MethodGet {
		// The admin API refuses a change of state without it (a guard
		// against web pages of other origins).
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		ue := &unreachableError{where: c.where, err: err}
		if c.adminFrom != "" {
			// [admin] is set up once per process: an address edited into
			// the file since it started is not served yet.
			ue.hint = "; the running process may still listen on the old address if [admin] bind in " + c.adminFrom +
				" was edited since it started (use --admin OLD, or SIGHUP; a control socket avoids this)"
		}
		return ue
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return &apiError{status: resp.StatusCode, msg: e.Error}
		}
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = body
		return nil
	}
	return json.Unmarshal(body, out)
}

func newClientCmds() []*cobra.Command {
	return []*cobra.Command{newStatusCmd(), newBackendCmd(), newReloadCmd(), newUpgradeCmd()}
}

func newStatusCmd() *cobra.Command {
	var f clientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show listeners, pools and backends of a running lbctl",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.do(http.MethodGet, "/api/v1/status", &raw); err != nil {
				return withCode(exitFailure, err)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			var st server.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				return withCode(exitFailure, err)
			}
			printStatus(cmd.OutOrStdout(), st, time.Now())
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")
	return cmd
}

func newReloadCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Ask a running lbctl to reload its config file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			if err := c.do(http.MethodPost, "/api/v1/reload", nil); err != nil {
				var unreachable *unreachableError
				if errors.As(err, &unreachable) {
					return withCode(exitFailure, err) // nothing was asked, nothing rejected
				}
				return withCode(exitFailure, fmt.Errorf("reload rejected, the old configuration keeps running: %w", err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
