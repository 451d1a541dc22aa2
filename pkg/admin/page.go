package admin

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"regexp"
	"strings"
)

// statusPage is the status page served at GET /: one HTML document with
// its style and script inline. It polls GET /api/v1/status and posts the
// drain / enable / disable endpoints, so it needs nothing the API does not
// already give; the document itself holds no data and needs no token.
//
//go:embed page/index.html
var statusPage []byte

// statusPageCSP forbids the page every other origin: it may talk only to
// the API that served it, and runs only its own inline style and script
// (by hash, so an injected element would not run either).
var statusPageCSP = contentSecurityPolicy(statusPage)

// inlineBlock finds the bodies of the <style> and <script> elements.
var inlineBlock = regexp.MustCompile(`(?s)<(style|script)>(.*?)</(?:style|script)>`)

// contentSecurityPolicy returns the policy for doc: default-src 'self',
// and its inline <style> and <script> elements allowed by their SHA-256.
func contentSecurityPolicy(doc []byte) string {
	hashes := map[string][]string{}
	for _, m := range inlineBlock.FindAllSubmatch(doc, -1) {
		sum := sha256.Sum256(m[2])
		hashes[string(m[1])] = append(hashes[string(m[1])], "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return strings.Join([]string{
		"default-src 'self'",
		"script-src " + strings.Join(append(hashes["script"], "'self'"), " "),
		"style-src " + strings.Join(append(hashes["style"], "'self'"), " "),
		"img-src 'self' data:",
		"connect-src 'self'",
		"base-uri 'none'",
		"form-action 'self'",
		"frame-ancestors 'none'",
	}, "; ")
}

// servePage answers GET / (and HEAD /) with the status page.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusPageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	w.Write(statusPage)
}
