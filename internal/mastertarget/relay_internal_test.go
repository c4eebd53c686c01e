package mastertarget

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"standby/internal/relay"
	"standby/internal/transport"
	"standby/internal/wire"
)

// Once a copy batch has waited relayWait for room in vain (apply is behind
// the relay's oldest batch, working through logged records), later copies
// go to the intake at once until the relay is empty again: each waiting
// relayWait held the whole session to one batch per relayWait.
func TestRelaySpillsAfterOneWait(t *testing.T) {
	m := &machine{s: &Server{cfg: Config{RelayBytes: 1 << 20}}, relay: relay.NewQueue(1 << 20)}
	m.cond = sync.NewCond(&m.mu)
	c := &transport.Conn{Conn: wire.NewConn(&bytes.Buffer{})}
	ctx := context.Background()
	copies := func(first uint64) *wire.Batch {
		return &wire.Batch{First: first, Last: first, Records: []wire.Record{{Seq: first, Op: wire.OpCopy, Length: 1 << 20, Data: make([]byte, 1<<20)}}}
	}
	relayed := func(b *wire.Batch) (bool, time.Duration) {
		t.Helper()
		start := time.Now()
		ok, err := m.relayCopies(ctx, b, wire.AppendBatch(nil, b), c)
		if err != nil {
			t.Fatal(err)
		}
		return ok, time.Since(start)
	}
	if ok, _ := relayed(copies(1)); !ok {
		t.Fatal("an empty relay refused a batch")
	}
	// The relay is full and nothing applies: the next batch waits
	// relayWait, then goes to the intake.
	if ok, took := relayed(copies(2)); ok || took < relayWait {
		t.Fatalf("second batch: relayed %v after %s, want the intake after %s", ok, took, relayWait)
	}
	// And the one after goes to the intake at once.
	if ok, took := relayed(copies(3)); ok || took > relayWait/4 {
		t.Fatalf("third batch: relayed %v after %s, want the intake at once", ok, took)
	}
	// Apply takes the relayed batch: the relay is empty, copies are
	// relayed again.
	if _, ok := m.relay.Peek(); !ok {
		t.Fatal("nothing in the relay")
	}
	m.relay.Pop()
	if ok, took := relayed(copies(4)); !ok || took > relayWait/4 {
		t.Fatalf("after the relay emptied: relayed %v after %s, want relayed at once", ok, took)
	}
}
