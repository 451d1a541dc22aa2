// Package admin serves lbctl's HTTP admin API and Prometheus metrics on the
// [admin] bind address:
//
//	GET    /                                                    the status page (page.go; no token needed)
//	GET    /metrics, /healthz, /readyz                          (no token needed)
//	GET    /api/v1/status
//	POST   /api/v1/pools/{pool}/backends/{address}/{drain|enable|disable}
//	POST   /api/v1/pools/{pool}/backends                        {"address": "IP:port", "weight": 1, "backup": false}
//	DELETE /api/v1/pools/{pool}/backends/{address}
//	PATCH  /api/v1/pools/{pool}/backends/{address}              {"weight": N} or {"weight": null}
//	POST   /api/v1/pools/{pool}/backends/{address}/kill
//	POST   /api/v1/reload
//	POST   /api/v1/upgrade                                      {"binary": "PATH", "timeout": "30s"}, both optional (upgrade.go)
//
// Clients outside Allow get 403; a Host header that is not an IP literal,
// localhost or one of Hosts gets 421 (DNS rebinding); POST, PATCH and DELETE
// without "Content-Type: application/json" get 403 (a web page of another
// origin cannot send that without a CORS preflight, which is never
// granted); with a token file, /api/ needs "Authorization: Bearer <token>"
// (401 otherwise). The control socket (NewControl, control.go) serves the
// same endpoints without any of these checks: its file mode decides. Errors are JSON
// {"error": "..."}: 400 for a bad body, 404 for an unknown path, pool or
// backend, 405 for a known path asked with the wrong method, 409 for an
// address already in the pool or the removal of a backend the API did not
// add. The {address} of a path is path-escaped ("[::1]:80" is
// %5B%3A%3A1%5D%3A80). The package holds no state of its own: it asks the
// server through the small Runtime and BackendEditor interfaces.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Runtime is what the admin API needs from the running load balancer.
type Runtime interface {
	Ready() bool
	Status() server.Status
	SetBackendAdmin(pool, address string, state balancer.AdminState) (server.BackendStatus, error)
}

// BackendEditor is what the admin API needs to change a pool's backend
// set at run time. The server's Runtime implements it too; a Runtime that
// does not makes those endpoints answer 501.
type BackendEditor interface {
	// AddBackend adds a backend of source "api"; server.ErrBackendExists
	// if its address is in the pool already.
	AddBackend(pool string, spec server.BackendSpec) (server.BackendStatus, error)
	// RemoveBackend removes a backend of source "api" (it drains);
	// server.ErrNotAPIBackend for any other.
	RemoveBackend(pool, address string) (server.BackendStatus, error)
	// SetWeightOverride sets the backend's weight; nil removes the override.
	SetWeightOverride(pool, address string, weight *int) (server.BackendStatus, error)
	// KillBackend resets the backend's established connections and ends
	// its sessions, returning how many.
	KillBackend(pool, address string) (killed int, err error)
}

// Options configure the admin API.
type Options struct {
	Bind      string
	Allow     []netip.Prefix // empty: loopback only
	Hosts     []string       // Host names accepted besides IP literals and localhost
	TokenFile string         // empty: no token needed
	Registry  *prometheus.Registry
	Server    Runtime
	Reload    func() error // reloads the config file; a config.Errors result is a 400
	// Upgrade starts the new binary and hands everything over to it
	// (POST /api/v1/upgrade, upgrade.go); nil answers 501.
	Upgrade func(UpgradeRequest) (UpgradeResult, error)
	// Listener, when set, is served instead of binding Bind (New) or path
	// (NewControl): the socket the old process of an upgrade passed.
	Listener net.Listener
	Log      *zap.Logger
}

// Server is a running admin API.
type Server struct {
	opts Options
	ln   net.Listener
	http *http.Server
	// control: served on the control socket (control.go), without the
	// checks of guard; unlink then removes its socket file at Close.
	control bool
	unlink  func()
}

// New binds the admin address. Serve then answers on it.
func New(opts Options) (*Server, error) {
	if len(opts.Allow) == 0 {
		opts.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", opts.Bind); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}
	return newServer(opts, ln, false), nil
}

// newServer serves the admin API on ln; control: it is the control socket.
func newServer(opts Options, ln net.Listener, control bool) *Server {
	s := &Server{opts: opts, ln: ln, control: control}
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          zap.NewStdLog(opts.Log.Named("admin")),
	}
	return s
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until Close.
func (s *Server) Serve() error { return s.http.Serve(s.ln) }

// Listening returns the socket the API is served on (for an upgrade to
// pass to the new process).
func (s *Server) Listening() net.Listener { return s.ln }

// StopListening closes the socket so that new connections go to another
// process serving a duplicate of it (the new process of an upgrade);
// requests in flight finish, and a later Close leaves the control socket's
// file alone, since the other process serves it now. Keep-alive ends too:
// idle connections are closed and answers in flight (the upgrade's own)
// say "Connection: close", so a client's next request reaches the other
// process instead of this one on a kept-alive connection.
func (s *Server) StopListening() {
	s.unlink = nil
	s.http.SetKeepAlivesEnabled(false)
	s.ln.Close()
}

// Close stops the admin API, letting requests in flight finish for a moment.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	if s.unlink != nil {
		s.unlink()
	}
	return err
}

// Handler returns the admin API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{Registry: s.opts.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.opts.Server.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	api := http.NewServeMux()
	api.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.opts.Server.Status())
	})
	api.HandleFunc("POST /api/v1/pools/{pool}/backends/{address}/{action}", s.backendAction)
	api.HandleFunc("POST /api/v1/pools/{pool}/backends", s.editor(s.addBackend))
	api.HandleFunc("DELETE /api/v1/pools/{pool}/backends/{address}", s.editor(s.removeBackend))
	api.HandleFunc("PATCH /api/v1/pools/{pool}/backends/{address}", s.editor(s.setWeight))
	api.HandleFunc("POST /api/v1/pools/{pool}/backends/{address}/kill", s.editor(s.killBackend))
	api.HandleFunc("POST /api/v1/reload", s.reload)
	api.HandleFunc("POST /api/v1/upgrade", s.upgrade)
	api.HandleFunc("/api/", noRoute(api, "/api/"))
	mux.Handle("/api/", s.authenticate(api))
	mux.HandleFunc("GET /{$}", s.servePage)
	mux.HandleFunc("/", noRoute(mux, "/"))
	return s.guard(mux)
}

// noRoute answers the requests that no endpoint of mux takes (its catch-all
// pattern): 405 with an Allow header when the path exists for another
// method, else 404.
func noRoute(mux *http.ServeMux, catchAll string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
			if m == r.Method {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != catchAll {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+" not allowed (use "+strings.Join(allowed, " or ")+")")
			return
		}
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}
}

// authenticate checks the bearer token when a token file is configured. The
// file is read on each request, so a rotated token takes effect at once.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.TokenFile != "" {
			want, err := os.ReadFile(s.opts.TokenFile)
			if err != nil {
				s.opts.Log.Error("admin token file unreadable, refusing API requests", zap.Error(err))
				writeError(w, http.StatusInternalServerError, "token file unreadable")
				return
			}
			token := strings.TrimSpace(string(want))
			// The scheme name is case-insensitive (RFC 9110, 11.1).
			scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			ok = ok && strings.EqualFold(scheme, "Bearer")
			if !ok || token == "" || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="lbctl"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) backendAction(w http.ResponseWriter, r *http.Request) {
	var state balancer.AdminState
	switch r.PathValue("action") {
	case "drain":
		state = balancer.Draining
	case "enable":
		state = balancer.Enabled
	case "disable":
		state = balancer.Disabled
	default:
		writeError(w, http.StatusNotFound, "unknown action "+r.PathValue("action")+" (drain, enable, disable)")
		return
	}
	pool, address := r.PathValue("pool"), r.PathValue("address")
	st, err := s.opts.Server.SetBackendAdmin(pool, address, state)
	if err != nil {
		writeRuntimeError(w, pool, address, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// editor hands h the server's BackendEditor, or answers 501 without one.
func (s *Server) editor(h func(BackendEditor, http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ed, ok := s.opts.Server.(BackendEditor)
		if !ok {
			writeError(w, http.StatusNotImplemented, "this server cannot change backends at run time")
			return
		}
		h(ed, w, r)
	}
}

// maxBody bounds the JSON bodies of the endpoints that take one.
const maxBody = 64 << 10

// decodeBody decodes the request's JSON body into v: one object, no field
// v does not have, nothing after it.
func decodeBody(r *http.Request, w http.ResponseWriter, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body, want a JSON object")
		}
		return fmt.Errorf("bad JSON body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("bad JSON body: data after the object")
	}
	return nil
}

// addBackend: POST /api/v1/pools/{pool}/backends with {"address": "IP:port",
// "weight": 1, "backup": false}; weight defaults to 1, backup to false.
// 201 with the backend's status. The server judges the address and the
// weight (a server.BadRequestError is a 400).
func (s *Server) addBackend(ed BackendEditor, w http.ResponseWriter, r *http.Request) {
	pool := r.PathValue("pool")
	var body struct {
		Address *string `json:"address"`
		Weight  *int    `json:"weight"`
		Backup  bool    `json:"backup"`
	}
	if err := decodeBody(r, w, &body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if body.Address == nil {
		writeError(w, http.StatusBadRequest, `missing "address" (IP:port)`)
		return
	}
	spec := server.BackendSpec{Address: *body.Address, Weight: 1, Backup: body.Backup}
	if body.Weight != nil {
		spec.Weight = *body.Weight
	}
	st, err := ed.AddBackend(pool, spec)
	if err != nil {
		writeRuntimeError(w, pool, spec.Address, err)
		return
	}
	w.Header().Set("Location", "/api/v1/pools/"+url.PathEscape(pool)+"/backends/"+url.PathEscape(st.Address))
	writeJSON(w, http.StatusCreated, st)
}

// removeBackend: DELETE /api/v1/pools/{pool}/backends/{address}, for a
// backend the API added. 200 with its status (removing while it drains).
func (s *Server) removeBackend(ed BackendEditor, w http.ResponseWriter, r *http.Request) {
	pool, address := r.PathValue("pool"), r.PathValue("address")
	st, err := ed.RemoveBackend(pool, address)
	if err != nil {
		writeRuntimeError(w, pool, address, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// setWeight: PATCH /api/v1/pools/{pool}/backends/{address} with
// {"weight": N} (an override) or {"weight": null} (back to the source's).
func (s *Server) setWeight(ed BackendEditor, w http.ResponseWriter, r *http.Request) {
	pool, address := r.PathValue("pool"), r.PathValue("address")
	var body struct {
		// Raw, to tell null (reset) from absent (a mistake).
		Weight json.RawMessage `json:"weight"`
	}
	if err := decodeBody(r, w, &body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var weight *int
	switch string(body.Weight) {
	case "":
		writeError(w, http.StatusBadRequest, `missing "weight" (a number, or null to remove the override)`)
		return
	case "null":
	default:
		var n int
		if err := json.Unmarshal(body.Weight, &n); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("bad weight %s: want an integer 0..%d or null", body.Weight, balancer.MaxWeight))
			return
		}
		weight = &n
	}
	st, err := ed.SetWeightOverride(pool, address, weight)
	if err != nil {
		writeRuntimeError(w, pool, address, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// killBackend: POST /api/v1/pools/{pool}/backends/{address}/kill resets the
// backend's established connections and sessions: 200 {"killed": N}.
func (s *Server) killBackend(ed BackendEditor, w http.ResponseWriter, r *http.Request) {
	pool, address := r.PathValue("pool"), r.PathValue("address")
	n, err := ed.KillBackend(pool, address)
	if err != nil {
		writeRuntimeError(w, pool, address, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"killed": n})
}

// writeRuntimeError answers a failed run-time change of backend address in
// pool.
func writeRuntimeError(w http.ResponseWriter, pool, address string, err error) {
	var bad *server.BadRequestError
	switch {
	case errors.Is(err, server.ErrUnknownPool):
		writeError(w, http.StatusNotFound, "unknown pool "+pool)
	case errors.Is(err, server.ErrUnknownBackend):
		writeError(w, http.StatusNotFound, "unknown backend "+address+" in pool "+pool)
	case errors.Is(err, server.ErrBackendExists):
		writeError(w, http.StatusConflict, "backend "+address+" is already in pool "+pool)
	case errors.Is(err, server.ErrNotAPIBackend):
		writeError(w, http.StatusConflict, "backend "+address+" in pool "+pool+
			" was not added through the API: remove it from its source (config file or discovery)")
	case errors.As(err, &bad):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, server.ErrNotRunning):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	err := s.opts.Reload()
	var errs config.Errors
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded"})
	case errors.As(err, &errs), errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		// The new file is invalid, missing or unreadable: the caller's to fix.
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, server.ErrNotRunning):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		// Valid, but it could not be applied (a bind in use, a name that does
		// not resolve); the old configuration keeps running.
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
