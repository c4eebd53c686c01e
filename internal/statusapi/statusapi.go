// Package statusapi serves a role's read-only status document and its
// Prometheus metrics on a local HTTP listener, and fetches them for the CLI.
package statusapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"standby/internal/localnet"
)

// Handler returns a mux with GET /status (the JSON of status()) and GET
// /metrics (reg, with the Go runtime's and the process's own metrics:
// resident memory, heap, goroutines, CPU time, open files).
func Handler(status func() any, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, status())
	})
	if reg != nil {
		// A registry per handler: a package-level default one would be
		// shared state between the roles a test runs in one process.
		rt := prometheus.NewRegistry()
		rt.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, rt}, promhttp.HandlerOpts{}))
	}
	return mux
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Serve serves h on ln until ctx is done.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status server: %w", err)
	}
	return nil
}

// Listen opens a status listener: a loopback host:port, or unix:PATH for
// a socket only its owner may use (mode 0600). The endpoint is plain HTTP
// and answers without a login (the master target's creates views of
// replicas), so it never listens beyond this host (internal/localnet).
func Listen(addr string) (net.Listener, error) {
	return localnet.Listen("status endpoint", addr, 0o600)
}

// Fetch reads a status document from addr (host:port or unix:PATH) into v.
func Fetch(ctx context.Context, addr string, v any) error {
	return Call(ctx, addr, http.MethodGet, "/status", nil, v)
}

// Call sends a request with a JSON body (nil for none) to a role's local
// endpoint and decodes the JSON answer into out. A non-2xx answer is an
// error carrying the body, which the roles fill with the reason.
func Call(ctx context.Context, addr, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	client := http.DefaultClient
	url := "http://" + addr + path
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p)
		}}}
		url = "http://local" + path
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s on %s: %w", method, path, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading answer of %s %s from %s: %w", method, path, addr, err)
	}
	if resp.StatusCode/100 != 2 {
		if out != nil {
			_ = json.Unmarshal(b, out)
		}
		return &CallError{Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding answer of %s %s from %s: %w", method, path, addr, err)
	}
	return nil
}

// CallError is a refusal from a role's endpoint.
type CallError struct {
	Status int
	Body   string
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Body)
}

// ErrorJSON writes an error answer {"error": msg}.
func ErrorJSON(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
