package main

// help.go: the Long text and examples of every command, in one place, so
// that `lbctl CMD --help`, the man pages (`lbctl gen man`) and the README
// read as one manual. They are written for someone who runs HAProxy or
// nginx today: where lbctl has an equivalent, the text names it.

import (
	"strings"

	"github.com/spf13/cobra"
)

// helpText is a command's Long text and Example field.
type helpText struct {
	long, example string
}

// helpTexts is keyed by the command's path ("lbctl backend drain").
var helpTexts = map[string]helpText{
	"lbctl": {
		long: `lbctl is a Layer-4 (TCP and UDP) load balancer: HAProxy's "mode tcp" or
nginx's "stream" module in one small binary with one TOML file.

A listener accepts connections (or UDP datagrams) and hands them to a pool
(or, for TLS, to the pool its server name routes to, without decrypting);
the pool picks a backend by weighted round-robin, least-connections,
consistent IP hash or Maglev, checks its health, and lbctl moves the bytes
both ways. Backends can be changed, drained and reloaded at run time without
dropping a connection.

"lbctl serve" runs the load balancer; "lbctl validate" checks a config the
way "haproxy -c" or "nginx -t" do. The other commands talk to a running
lbctl through its control socket or admin API, much as HAProxy's runtime
API (socat on the stats socket) does: status, backend, reload.

Without --config, serve and validate use $LBCTL_CONFIG, then ./lbctl.toml,
then /etc/lbctl/lbctl.toml; the client commands find the control socket, the
admin address and the token file in that same config (--socket, --admin and
--token-file override them).

Exit status: 0 success; 1 run-time failure (cannot bind, admin API
unreachable, reload rejected); 2 bad configuration or usage.`,
		example: `  # Check the config, then run in the foreground (systemd runs this for you)
  lbctl validate --config /etc/lbctl/lbctl.toml
  lbctl serve --config /etc/lbctl/lbctl.toml

  # What is up, what is down, and why
  lbctl status

  # Take a backend out for maintenance, waiting for its last connection
  lbctl backend drain web 10.0.0.12:80 --wait
  lbctl backend enable web 10.0.0.12:80`,
	},
	"lbctl serve": {
		long: `Run the load balancer in the foreground until SIGTERM or SIGINT, logging to
stderr (under systemd, to the journal). It is what the lbctl.service unit
starts; there is no daemon mode: use systemd, as with "haproxy -Ws".

The config is loaded and checked first; a bad one exits 2 with every
problem and its file:line, and nothing is bound.

SIGTERM or SIGINT closes the listeners, lets open connections finish for up
to shutdown_timeout, closes the rest and exits 0.

SIGHUP reloads the config file, as "lbctl reload" does: a valid file takes
effect without dropping connections; an invalid one is logged and the old
configuration keeps running.

SIGUSR2 upgrades, as "lbctl upgrade" does with its defaults: the binary
lbctl was started from, as it is on disk now, starts and takes everything
over; only the log says whether it worked.`,
		example: `  lbctl serve --config /etc/lbctl/lbctl.toml

  # Under systemd (see lbctl.service)
  sudo systemctl start lbctl
  journalctl -u lbctl -f`,
	},
	"lbctl validate": {
		long: `Load and check a config file, printing every problem found, each with its
file, line and key, like "haproxy -c -f" or "nginx -t". Exit status 0 when
the file is valid, 2 when it is not (or cannot be read).

Static backend host names are resolved as serve and reload would; discovery
sources (dns, srv, file, etcd) are not contacted. The [admin] token_file is
read as the user running validate, so run it as the service's user (or
root) to check what serve will see.`,
		example: `  lbctl validate --config /etc/lbctl/lbctl.toml

  # Before every reload, as "nginx -t && nginx -s reload"
  lbctl validate && sudo systemctl reload lbctl`,
	},
	"lbctl version": {
		long: `Print lbctl's version, the commit it was built from, the Go version and the
platform. "lbctl --version" prints the same line.`,
		example: `  lbctl version
  lbctl --version`,
	},
	"lbctl status": {
		long: `Show the listeners, pools and backends of a running lbctl, with each
backend's health, admin state (enabled, draining, disabled), weight and
connection counters: what HAProxy's stats page or "show servers state"
shows. --json prints the admin API's JSON as it is, for scripts.

First come the version, the uptime, the config file and the last reload
(and, when it failed, why, one problem per line). Then, per backend, SINCE
is how long ago its state last changed, and LAST CHECK the result of its
last health check, how long ago, how long it took and, when it failed, why
(the socket error: "connection refused", "i/o timeout", the status code...).

A listener that routes TLS by server name shows its routes' pools after
its own ("web +routes api,shop"). A weight marked * was overridden at run
time ("lbctl backend weight"); a backend marked (removing) has left its
pool and is draining its last connections. Exit status 1 when the running
lbctl cannot be reached.`,
		example: `  lbctl status
  sudo lbctl status --socket /run/lbctl/lbctl.sock
  lbctl status --admin 10.0.0.5:9900 --token-file /etc/lbctl/token
  lbctl status --json | jq '.pools[].backends[] | select(.health == "down")'`,
	},
	"lbctl reload": {
		long: `Ask a running lbctl to read its config file again and apply it, like
"systemctl reload haproxy" or "nginx -s reload". The whole file is checked
first: an invalid file changes nothing, and its problems are printed, one
per line (exit 1). A valid file takes effect without dropping an
established connection or refusing a new one. SIGHUP does the same, but
only the log says whether it worked.

Through the control socket (under systemd, in its RuntimeDirectory) this
works without an [admin] table, and after [admin] was edited.`,
		example: `  lbctl reload
  sudo systemctl reload lbctl          # runs lbctl reload`,
	},
	"lbctl upgrade": {
		long: `Replace the running lbctl by a new binary without dropping anything, like
nginx's USR2 or "haproxy -x": the new process (--binary, default the
executable the running lbctl was started from, as it is on disk now, so
after a package upgrade the new version) starts with the same arguments,
takes every listening socket (no connection refused meanwhile), the admin
API, the control socket and the run-time state (admin states, weight
overrides, API backends, backends down), then the established TCP
connections and UDP sessions. The old process exits once what it could not
hand over within shutdown_timeout has finished.

The new process has --timeout (default 30s) to become ready. If it fails to
start, exits or is not ready in time, it is killed, the running lbctl keeps
serving everything, and upgrade exits 1 with the reason. Only one upgrade
runs at a time. Exit status 0 once the new process serves.

Under systemd the new process becomes the unit's main process (MAINPID=);
"systemctl reload" stays a reload.`,
		example: `  # After the package manager replaced /usr/bin/lbctl
  sudo lbctl upgrade
  lbctl upgrade --binary /opt/lbctl-1.4/lbctl --timeout 1m
  sudo systemctl kill --signal=USR2 --kill-whom=main lbctl   # the same, without an answer`,
	},
	"lbctl backend": {
		long: `Change a pool's backends while lbctl runs, without a reload: HAProxy's
"set server ... state drain|ready|maint" and "set server ... weight", or
nginx's upstream API. Admin states and weight overrides survive reloads
(and restarts, with state_file); they are shown by "lbctl status".

POOL is the pool's name in the config ([pools.NAME]); ADDRESS is the
backend's address as written there, or as "lbctl status" shows it. Both
complete on the command line from the running lbctl.`,
		example: `  lbctl backend drain web 10.0.0.12:80 --wait
  lbctl backend disable web 10.0.0.12:80
  lbctl backend enable web 10.0.0.12:80
  lbctl backend add web 10.0.0.14:80 --weight 2
  lbctl backend weight web 10.0.0.14:80 5
  lbctl backend remove web 10.0.0.14:80`,
	},
	"lbctl backend drain": {
		long: `Stop sending new connections to a backend; its established connections
continue until they end (HAProxy's "state drain"). With --wait, return only
once the backend has no active connection, or exit 1 after --timeout: use it
before stopping the backend's host. "lbctl backend enable" undoes it.`,
		example: `  lbctl backend drain web 10.0.0.12:80
  lbctl backend drain web 10.0.0.12:80 --wait --timeout 10m && ssh 10.0.0.12 sudo reboot`,
	},
	"lbctl backend enable": {
		long: `Let a drained or disabled backend take new connections again (HAProxy's
"state ready"). It still needs to pass its health check to be chosen.`,
		example: `  lbctl backend enable web 10.0.0.12:80`,
	},
	"lbctl backend disable": {
		long: `Take a backend out of service (HAProxy's "state maint"): it gets no new
connections, whatever its health, until "lbctl backend enable". Health
checks go on, so status still shows whether it would be up. Established
connections continue; "lbctl backend kill" ends them. Drain and disable
route alike; drain says "on its way out", disable "out of service".`,
		example: `  lbctl backend disable web 10.0.0.12:80
  lbctl backend kill web 10.0.0.12:80     # and end what still runs`,
	},
	"lbctl backend add": {
		long: `Add a backend (a literal IP:port) to a pool at run time, like HAProxy's
"add server" or the nginx Plus upstream API. It is health-checked like the
others and stays, across reloads (and restarts with state_file), until
"lbctl backend remove". The weight is 0..1000000 (default 1); a backup takes
connections only while no primary is eligible.`,
		example: `  lbctl backend add web 10.0.0.14:80
  lbctl backend add web 10.0.0.15:80 --weight 3
  lbctl backend add web 10.0.0.16:80 --backup`,
	},
	"lbctl backend remove": {
		long: `Remove a backend added with "lbctl backend add". It takes no new
connections at once; established ones continue for up to the pool's
drain_timeout, then are reset. Backends from the config file or a discovery
source are removed by editing their source (drain or disable them
meanwhile).`,
		example: `  lbctl backend remove web 10.0.0.14:80`,
	},
	"lbctl backend weight": {
		long: `Override a backend's weight (0..1000000; 0 takes no new connections) until
--reset, across reloads and discovery refreshes, like HAProxy's "set server
... weight". --reset goes back to the weight its source (config file, DNS,
file, etcd) gives. "lbctl status" marks an overridden weight with *.`,
		example: `  lbctl backend weight web 10.0.0.11:80 5
  lbctl backend weight web 10.0.0.11:80 0       # no new connections, as drain
  lbctl backend weight web 10.0.0.11:80 --reset`,
	},
	"lbctl backend kill": {
		long: `Reset every established connection of a backend and end its UDP sessions
at once (HAProxy's "shutdown sessions server"). The backend's admin state
is not changed: disable or drain it first, or new connections keep
arriving.`,
		example: `  lbctl backend disable web 10.0.0.12:80 && lbctl backend kill web 10.0.0.12:80`,
	},
	"lbctl completion": {
		example: `  # bash, for this shell (make install puts it where bash-completion finds it)
  source <(lbctl completion bash)

  # zsh, fish
  lbctl completion zsh > "${fpath[1]}/_lbctl"
  lbctl completion fish > ~/.config/fish/completions/lbctl.fish`,
	},
}

// applyHelp sets the Long text and examples of every command below root
// from helpTexts. A command without an entry keeps what it has.
func applyHelp(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		h, ok := helpTexts[c.CommandPath()]
		if !ok {
			return
		}
		if h.long != "" {
			c.Long = strings.TrimSpace(h.long)
		}
		c.Example = h.example
	})
}

// walk calls f on c and every command below it.
func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		walk(sub, f)
	}
}
