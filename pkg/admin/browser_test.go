package admin

// The status page in a real headless Chromium (Debian's chromium), driven
// with chromedp, against a real server with real TCP backends and active
// health checks.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/server"
)

// pageInterval is the health check interval of the page tests (fall = 1):
// a killed backend is marked down at the next check, at most this long
// after the kill.
const pageInterval = 500 * time.Millisecond

// pagePoll is how often the page polls the status (POLL_MS in
// page/index.html).
const pagePoll = time.Second

// pageEnv is an env (newEnv) whose server has TCP health checks and real
// backends: web1 (weight 3), web2, web3 (backup) in pool web, db1 in pool
// db (no checks).
type pageEnv struct {
	*env
	backends map[string]*lbtest.Backend
}

func newPageEnv(t *testing.T, token string) *pageEnv {
	t.Helper()
	e := &pageEnv{backends: map[string]*lbtest.Backend{}}
	for _, name := range []string{"web1", "web2", "web3", "db1"} {
		e.backends[name] = lbtest.NewTCP(t, lbtest.Echo)
	}
	text := fmt.Sprintf(`
[listeners.web]
bind = "127.0.0.1:0"
pool = "web"

[listeners.db]
bind = "127.0.0.1:0"
pool = "db"

[pools.web]
algorithm = "round-robin"
  [[pools.web.backends]]
  address = %q
  weight = 3
  [[pools.web.backends]]
  address = %q
  [[pools.web.backends]]
  address = %q
  backup = true
  [pools.web.health]
  check = "tcp"
  interval = %q
  timeout = "400ms"
  rise = 1
  fall = 1

[pools.db]
algorithm = "least-connections"
  [[pools.db.backends]]
  address = %q
  [pools.db.health]
  check = "none"
`, e.backends["web1"].Addr, e.backends["web2"].Addr, e.backends["web3"].Addr, pageInterval.String(), e.backends["db1"].Addr)
	e.env = newEnv(t, envOptions{token: token, config: text, version: "v1.2.3-test"})
	return e
}

// backend reads one backend's status from GET /api/v1/status.
func (e *pageEnv) backend(pool, address string) server.BackendStatus {
	e.t.Helper()
	code, body := e.do(http.MethodGet, "/api/v1/status")
	var st server.Status
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusOK {
		e.t.Fatalf("status: %d %v", code, err)
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if p.Name == pool && b.Address == address {
				return b
			}
		}
	}
	e.t.Fatalf("no backend %s in pool %s", address, pool)
	return server.BackendStatus{}
}

// newBrowser starts a headless Chromium for the test and returns the
// context of its first tab; both end at the end of the test. Without
// chromium the test is skipped, except under CI=true.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	bin := lbtest.Binary(t, "chromium", "/usr/bin/chromium", "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium's sandbox refuses to run as root
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser to exit
	})
	// The first action starts the browser and binds its life to the
	// context it gets: ctx, not one with a deadline.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs actions in the tab, failing the test after 10 s.
func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// eval evaluates expr in the tab.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shownBackend is a backend's card as the page shows it.
type shownBackend struct {
	Health   string `json:"health"`   // data-health
	Admin    string `json:"admin"`    // data-admin
	Badge    string `json:"badge"`    // the health badge's text: UP or DOWN
	AdminTxt string `json:"adminTxt"` // the admin badge's text
	Text     string `json:"text"`     // the whole card's text
}

// shown reads every backend card of the page, keyed "pool|address".
func shown(t *testing.T, ctx context.Context) map[string]shownBackend {
	t.Helper()
	return eval[map[string]shownBackend](t, ctx, `(() => {
		const out = {};
		for (const c of document.querySelectorAll("article.backend")) {
			out[c.dataset.pool + "|" + c.dataset.address] = {
				health: c.dataset.health, admin: c.dataset.admin,
				badge: c.querySelector(".health").textContent, adminTxt: c.querySelector(".admin").textContent,
				text: c.innerText,
			};
		}
		return out;
	})()`)
}

// artifact writes a file of the test's output under $LBCTL_ARTIFACTS (else
// the test's temporary directory) and logs its path.
func artifact(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := os.Getenv("LBCTL_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, len(data))
}

// requests records the URLs the tab requests, the answers' statuses, and
// the page's uncaught exceptions.
type requests struct {
	mu         sync.Mutex
	urls       []string
	status     map[string][]int64 // by URL
	exceptions []string
}

func recordRequests(t *testing.T, ctx context.Context) *requests {
	t.Helper()
	r := &requests{status: map[string][]int64{}}
	err := chromedp.Listen(ctx, func(ev any) {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			r.urls = append(r.urls, ev.Request.URL)
		case *network.EventResponseReceived:
			r.status[ev.Response.URL] = append(r.status[ev.Response.URL], ev.Response.Status)
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := fmt.Sprintf("%s:%d: %s", d.URL, d.LineNumber+1, d.Text)
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			r.exceptions = append(r.exceptions, msg)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *requests) snapshot() ([]string, map[string][]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := map[string][]int64{}
	for k, v := range r.status {
		st[k] = append([]int64(nil), v...)
	}
	return append([]string(nil), r.urls...), st
}

// TestStatusPageBrowser opens the page in Chromium: it shows every
// listener, pool and backend with the status fields, a killed backend
// turns DOWN within a poll of the checker's verdict, a click on Drain
// drains, it fits a phone's width, and it requests nothing from another
// origin. Screenshots go to the test's output.
func TestStatusPageBrowser(t *testing.T) {
	e := newPageEnv(t, "")
	ctx := newBrowser(t)
	reqs := recordRequests(t, ctx)
	// Record every CSP violation the page would cause.
	do(t, ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		return callAddScript(ctx, tg, `window.__violations = [];
			document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));`)
	}))
	do(t, ctx, chromedp.Navigate(e.base+"/"))

	web1, web2, web3, db1 := e.backends["web1"].Addr, e.backends["web2"].Addr, e.backends["web3"].Addr, e.backends["db1"].Addr
	var cards map[string]shownBackend
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		cards = shown(t, ctx)
		c := cards["web|"+web1]
		return len(cards) == 4 && strings.Contains(c.Text, "success"), fmt.Sprintf("cards %v", cards)
	})
	for key, want := range map[string][]string{
		"web|" + web1: {"UP", "enabled", "weight", "3", "active / total", "0 / 0", "failures", "source", "config", "last check", "success", "last change", "never"},
		"web|" + web3: {"UP", "backup"},
		"db|" + db1:   {"UP", "last check", "none"},
	} {
		for _, w := range want {
			if !strings.Contains(cards[key].Text, w) {
				t.Errorf("card %s lacks %q: %q", key, w, cards[key].Text)
			}
		}
	}
	header := eval[string](t, ctx, `document.querySelector("header").innerText`)
	for _, w := range []string{"version v1.2.3-test", "lbctl.toml", "up "} {
		if !strings.Contains(header, w) {
			t.Errorf("header lacks %q: %q", w, header)
		}
	}
	listeners := eval[string](t, ctx, `document.getElementById("listeners").innerText`)
	for name, addr := range e.srv.Listeners() {
		if !strings.Contains(listeners, name) || !strings.Contains(listeners, addr.String()) {
			t.Errorf("listener %s %s not shown: %q", name, addr, listeners)
		}
	}
	pools := eval[string](t, ctx, `document.getElementById("pools").innerText`)
	for _, w := range []string{"pool web", "round-robin", "3 of 3 serving", "pool db", "least-connections"} {
		if !strings.Contains(pools, w) {
			t.Errorf("pools lack %q: %q", w, pools)
		}
	}

	// A killed backend: the checker marks it down at its next check; the
	// page shows it at its next poll, so within pagePoll of the status
	// saying so, and within pageInterval + pagePoll of the kill. The
	// margin (1 s) is for a fetch and a render on a loaded machine.
	const margin = time.Second
	killed := time.Now()
	e.backends["web2"].Close()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		b := e.backend("web", web2)
		return b.Health == "down", "status says " + b.Health
	})
	marked := time.Now()
	lbtest.Until(t, pagePoll+margin, func() (bool, string) {
		c := shown(t, ctx)["web|"+web2]
		return c.Health == "down" && c.Badge == "DOWN", fmt.Sprintf("page shows %+v", c)
	})
	onPage := time.Now()
	t.Logf("web2 killed; status down after %v; page DOWN %v later (%v after the kill)",
		marked.Sub(killed).Round(time.Millisecond), onPage.Sub(marked).Round(time.Millisecond), onPage.Sub(killed).Round(time.Millisecond))
	if took := onPage.Sub(killed); took > pageInterval+pagePoll+margin {
		t.Errorf("page showed DOWN %v after the kill, want within interval %v + %v (+%v margin)", took, pageInterval, pagePoll, margin)
	}
	c := shown(t, ctx)["web|"+web2]
	for _, w := range []string{"failure", "reason", "refused"} {
		if !strings.Contains(c.Text, w) {
			t.Errorf("down card lacks %q: %q", w, c.Text)
		}
	}

	// Drain web1 with its button.
	do(t, ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`article[data-address=%q] button[data-action="drain"]`, web1))))
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		b := e.backend("web", web1)
		return b.Admin == "draining", "status says " + b.Admin
	})
	lbtest.Until(t, pagePoll+margin, func() (bool, string) {
		c := shown(t, ctx)["web|"+web1]
		return c.Admin == "draining" && c.AdminTxt == "draining", fmt.Sprintf("page shows %+v", c)
	})
	if disabled := eval[bool](t, ctx, fmt.Sprintf(`document.querySelector('article[data-address=%q] button[data-action="drain"]').disabled`, web1)); !disabled {
		t.Errorf("the Drain button of a draining backend is enabled")
	}
	// A reload shows in the header.
	if code, _ := e.do(http.MethodPost, "/api/v1/reload"); code != http.StatusOK {
		t.Fatalf("reload: %d", code)
	}
	lbtest.Until(t, pagePoll+margin, func() (bool, string) {
		r := eval[string](t, ctx, `document.getElementById("reload").innerText`)
		return strings.HasPrefix(r, "last reload ok"), fmt.Sprintf("header shows %q", r)
	})
	summary := eval[string](t, ctx, `document.getElementById("summary").innerText`)
	for _, w := range []string{"3 up", "1 down", "1 draining", "0 disabled"} {
		if !strings.Contains(summary, w) {
			t.Errorf("summary lacks %q: %q", w, summary)
		}
	}

	shot := func(name string) {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		artifact(t, name, png)
	}
	shot("status-page.png")

	// A phone: 375 CSS pixels wide, nothing wider than the screen.
	do(t, ctx, chromedp.EmulateViewport(375, 812, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		w := eval[[]int](t, ctx, `[window.innerWidth, document.documentElement.scrollWidth]`)
		return w[0] == 375 && w[1] <= 375, fmt.Sprintf("viewport %d, page %d CSS pixels wide", w[0], w[1])
	})
	shot("status-page-phone.png")

	// A wall screen: the text grows with the screen, a DOWN badge most.
	do(t, ctx, chromedp.EmulateViewport(2560, 1440))
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		px := eval[[]float64](t, ctx, fmt.Sprintf(`[window.innerWidth,
			parseFloat(getComputedStyle(document.documentElement).fontSize),
			parseFloat(getComputedStyle(document.querySelector('article[data-address=%q] .health')).fontSize)]`, web2))
		return px[0] == 2560 && px[1] >= 20 && px[2] >= 24,
			fmt.Sprintf("viewport %v: text %vpx, DOWN badge %vpx; want at least 20 and 24", px[0], px[1], px[2])
	})
	shot("status-page-wall.png")

	// Sections the page does not know by name (bgp) show as tables.
	extra := eval[string](t, ctx, `renderExtra({bgp: {
		peers: [{address: "10.0.0.1", asn: 65000, state: "established", since: "2026-01-02T03:04:05Z"}],
		announcements: [{prefix: "10.99.0.1/32", listeners: ["web"], announced: true}]}});
		document.getElementById("extra").innerText`)
	for _, w := range []string{"bgp", "peers", "10.0.0.1", "65000", "established", "announcements", "10.99.0.1/32", `["web"]`, "true"} {
		if !strings.Contains(extra, w) {
			t.Errorf("bgp section lacks %q: %q", w, extra)
		}
	}

	// Every request went to the admin API's origin; the status was polled.
	urls, _ := reqs.snapshot()
	polls := 0
	for _, u := range urls {
		if !strings.HasPrefix(u, e.base+"/") {
			t.Errorf("the page requested %s (another origin)", u)
		}
		if u == e.base+"/api/v1/status" {
			polls++
		}
	}
	if polls < 3 {
		t.Errorf("%d status polls seen, want at least 3: %v", polls, urls)
	}
	if v := eval[[]string](t, ctx, `window.__violations`); len(v) > 0 {
		t.Errorf("CSP violations: %v", v)
	}
	reqs.mu.Lock()
	defer reqs.mu.Unlock()
	if len(reqs.exceptions) > 0 {
		t.Errorf("uncaught exceptions in the page: %q", reqs.exceptions)
	}
}

// callAddScript runs src in every document the tab loads, before its own
// scripts.
func callAddScript(ctx context.Context, tg *chromedp.Target, src string) error {
	_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: src})
	return err
}

// TestStatusPageToken: with a token file, the page asks for the token once
// (the API answered 401), keeps it for the tab, and the buttons use it.
func TestStatusPageToken(t *testing.T) {
	const token = "tok-3f9a"
	e := newPageEnv(t, token)
	ctx := newBrowser(t)
	var mu sync.Mutex
	var prompts []string
	dctx, stopDialogs := context.WithCancel(ctx)
	dialogs := chromedp.Events(dctx, page.JavascriptDialogOpening)
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			mu.Lock()
			prompts = append(prompts, string(ev.Type)+": "+ev.Message)
			mu.Unlock()
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true, PromptText: token})
		}
	}()
	t.Cleanup(func() {
		stopDialogs()
		<-answered
	})
	nprompts := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(prompts)
	}

	web1 := e.backends["web1"].Addr
	do(t, ctx, chromedp.Navigate(e.base+"/"))
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := len(shown(t, ctx))
		return n == 4, fmt.Sprintf("%d cards, %d prompts", n, nprompts())
	})
	do(t, ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`article[data-address=%q] button[data-action="disable"]`, web1))))
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		b := e.backend("web", web1)
		return b.Admin == "disabled", "status says " + b.Admin
	})
	// A new load of the page keeps the token (sessionStorage): no prompt.
	do(t, ctx, chromedp.Navigate(e.base+"/"))
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		c := shown(t, ctx)["web|"+web1]
		return c.Admin == "disabled", fmt.Sprintf("page shows %+v", c)
	})
	mu.Lock()
	defer mu.Unlock()
	if len(prompts) != 1 || !strings.HasPrefix(prompts[0], "prompt: ") || !strings.Contains(prompts[0], "token") {
		t.Errorf("prompts %q, want one prompt for the token", prompts)
	}
}

// TestStatusPageCrossOriginPOST: a page of another origin (another port of
// 127.0.0.1) cannot change a backend: neither a no-cors fetch with a
// text/plain body nor a form submitted to the API gets through.
func TestStatusPageCrossOriginPOST(t *testing.T) {
	e := newPageEnv(t, "")
	web1 := e.backends["web1"].Addr
	action := e.base + "/api/v1/pools/web/backends/" + url.PathEscape(web1)
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>elsewhere</title>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="f1" method="post" action="%[1]s/drain" target="sink1" enctype="text/plain"><input name="a" value="b"></form>
<form id="f2" method="post" action="%[1]s/disable" target="sink2"><input name="a" value="b"></form>
<script>
window.done = {fetch: false, sink1: false, sink2: false};
fetch(%[2]q, {method: "POST", mode: "no-cors", body: "x", headers: {"Content-Type": "text/plain"}})
  .then(() => { window.done.fetch = "answered"; }, (e) => { window.done.fetch = "failed: " + e; });
for (const n of ["sink1", "sink2"]) {
  document.querySelector("iframe[name=" + n + "]").addEventListener("load", () => { window.done[n] = true; });
}
document.getElementById("f1").submit();
document.getElementById("f2").submit();
</script>`, action, action+"/disable")
	}))
	t.Cleanup(evil.Close)
	if strings.HasPrefix(evil.URL, e.base) {
		t.Fatalf("same origin: %s %s", evil.URL, e.base)
	}

	ctx := newBrowser(t)
	reqs := recordRequests(t, ctx)
	do(t, ctx, chromedp.Navigate(evil.URL+"/"))
	// Wait until the browser has the API's answer to each of the three.
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		_, st := reqs.snapshot()
		return len(st[action+"/disable"]) == 2 && len(st[action+"/drain"]) == 1, fmt.Sprintf("answers %v", st)
	})
	_, st := reqs.snapshot()
	t.Logf("answers to the other origin's requests: %v", st)
	for u, codes := range st {
		if !strings.HasPrefix(u, e.base) {
			continue
		}
		for _, code := range codes {
			if code != http.StatusForbidden {
				t.Errorf("POST %s from another origin: %d, want 403", u, code)
			}
		}
	}
	if b := e.backend("web", web1); b.Admin != "enabled" {
		t.Errorf("backend %s is %s after cross-origin POSTs, want enabled", web1, b.Admin)
	}
}
