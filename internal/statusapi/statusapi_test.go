package statusapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

func TestHandlerServesStatusAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "standby_test_queue_bytes", Help: "test"}, func() float64 { return 42 }))
	srv := httptest.NewServer(Handler(func() any { return map[string]int{"applied_seq": 7} }, reg))
	defer srv.Close()

	var st map[string]int
	if err := json.Unmarshal([]byte(get(t, srv.URL+"/status")), &st); err != nil || st["applied_seq"] != 7 {
		t.Fatalf("status: %v %v", st, err)
	}
	m := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		"standby_test_queue_bytes 42",    // the role's own
		"process_resident_memory_bytes ", // what an operator watches for a leak
		"go_memstats_heap_inuse_bytes ",  // and whether it is the heap
		"go_goroutines ",                 // or goroutines
		"process_open_fds ",              // or descriptors
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Two handlers in one process (roles in a test) must not collide.
	srv2 := httptest.NewServer(Handler(func() any { return nil }, prometheus.NewRegistry()))
	defer srv2.Close()
	if m2 := get(t, srv2.URL+"/metrics"); !strings.Contains(m2, "go_goroutines ") {
		t.Errorf("second handler's /metrics lacks the runtime metrics")
	}
}
