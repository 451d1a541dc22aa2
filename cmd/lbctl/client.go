package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/spf13/cobra"
)

const defaultAdmin = "127.0.0.1:9900"

// clientFlags are the flags of the commands that talk to a running lbctl.
type clientFlags struct {
	admin, tokenFile, config string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin API address (default: [admin] bind of the config found, else "+defaultAdmin+")")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (default: [admin] token_file of the config found)")
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file to take the defaults from")
}

// client returns an HTTP client for the admin API, with defaults taken from
// the config file found, if any.
func (f *clientFlags) client() (*adminClient, error) {
	admin, tokenFile := f.admin, f.tokenFile
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
			if bind, tf, ok := config.AdminDefaults(data); err == nil && ok {
				if admin == "" {
					admin = bind
				}
				if tokenFile == "" {
					tokenFile = tf
				}
			}
		}
	}
	if admin == "" {
		admin = defaultAdmin
	}
	c := &adminClient{base: adminBase(admin), http: &http.Client{Timeout: 30 * time.Second}}
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
}

// do sends a request and decodes a 2xx JSON answer into out. Other answers
// become errors carrying the API's message.
func (c *adminClient) do(method, path string, out any) error {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API: %w", err)
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
			return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
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
	return []*cobra.Command{newStatusCmd(), newBackendCmd(), newReloadCmd()}
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
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")
	return cmd
}

// printStatus writes the status as two tables, listeners then backends by
// pool.
func printStatus(out io.Writer, st server.Status) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "LISTENER\tPROTOCOL\tBIND\tPOOL\tACTIVE")
	for _, l := range st.Listeners {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", l.Name, l.Protocol, l.Bind, l.Pool, l.Active)
	}
	if len(st.Listeners) == 0 {
		fmt.Fprintln(w, "(none)")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "POOL\tALGORITHM\tBACKEND\tHEALTH\tADMIN\tWEIGHT\tBACKUP\tACTIVE\tTOTAL\tFAILURES")
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			backup := "-"
			if b.Backup {
				backup = "yes"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n",
				p.Name, p.Algorithm, b.Address, b.Health, b.Admin, b.Weight, backup, b.Active, b.Total, b.Failures)
		}
	}
	w.Flush()
}

func newBackendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backend drain|enable|disable POOL ADDRESS",
		Short: "Change a backend's administrative state at run time",
		// Reached only without a known action: a usage error (exit 2).
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCode(exitUsage, fmt.Errorf("missing or unknown action %q: want drain, enable or disable\n%s",
				strings.Join(args, " "), cmd.UsageString()))
		},
	}
	for _, action := range []struct{ name, short string }{
		{"drain", "Stop new connections to a backend; established ones continue"},
		{"enable", "Let a backend take new connections again"},
		{"disable", "Take a backend out of service (no new connections)"},
	} {
		var f clientFlags
		sub := &cobra.Command{
			Use:   action.name + " POOL ADDRESS",
			Short: action.short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := f.client()
				if err != nil {
					return err
				}
				var b server.BackendStatus
				path := "/api/v1/pools/" + url.PathEscape(args[0]) + "/backends/" + url.PathEscape(args[1]) + "/" + action.name
				if err := c.do(http.MethodPost, path, &b); err != nil {
					return withCode(exitFailure, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), backendMessage(args[0], b))
				return nil
			},
		}
		f.register(sub)
		cmd.AddCommand(sub)
	}
	return cmd
}

// backendMessage says what a backend's new admin state means.
func backendMessage(pool string, b server.BackendStatus) string {
	msg := fmt.Sprintf("pool %s backend %s: %s (health %s)", pool, b.Address, b.Admin, b.Health)
	if b.Admin != "enabled" {
		msg += fmt.Sprintf(", takes no new connections; %d established continue", b.Active)
	}
	return msg
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
				return withCode(exitFailure, fmt.Errorf("reload rejected, the old configuration keeps running: %w", err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
