package processserver

import (
	"context"
	"encoding/json"
	"time"

	"standby/internal/wire"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// waitBandwidth holds a frame of n bytes until the master target's
// bandwidth budget allows it, and reports how long it waited: time spent
// here means the link, not the CPU, is the bottleneck.
func (s *Server) waitBandwidth(ctx context.Context, n int) time.Duration {
	if s.limiter == nil {
		return 0
	}
	start := time.Now()
	_ = s.limiter.Wait(ctx, int64(n)) // only ctx ends it: the session is going
	return time.Since(start)
}

// chooseCodec applies the compression policy. Adaptive: while frames wait
// for bandwidth, spend CPU on zstd's better ratio; when they don't, the
// CPU is the limit and s2's speed wins. A master target on a loopback
// address shares this machine's memory, not a network: compressing for it
// only spends CPU on both ends (measured in docs/benchmarks.md: the
// initial copy took 10 % longer and 14 % more CPU with s2 than without),
// so nothing is compressed unless a bandwidth limit is being waited for.
func (s *Server) chooseCodec(prev wire.Codec, waited time.Duration) wire.Codec {
	if s.cfg.Compression != "adaptive" {
		c, _ := wire.ParseCodec(s.cfg.Compression)
		return c
	}
	if waited > time.Millisecond {
		return wire.CodecZstd
	}
	if waited == 0 && s.loopbackMT {
		return wire.CodecNone
	}
	if waited == 0 {
		return wire.CodecS2
	}
	return prev
}
