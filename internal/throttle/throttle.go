// Package throttle paces bulk transfers to a rate in bytes per second: a
// token bucket (golang.org/x/time/rate) that also takes amounts larger
// than its burst, which whole frames and copy chunks often are.
package throttle

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/time/rate"
)

// Limiter paces bytes. A nil *Limiter never waits, so callers need not
// check whether a limit is configured.
type Limiter struct {
	l        *rate.Limiter
	minBurst int
}

// New returns a limiter of bytesPerSec, or nil (no limit) when it is not
// positive. The burst is a tenth of a second's worth, and at least
// minBurst: enough that one typical transfer passes in one step.
func New(bytesPerSec int64, minBurst int) *Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return NewAdjustable(bytesPerSec, minBurst)
}

// NewAdjustable is New for a limit that SetRate changes later: it is never
// nil, and a bytesPerSec of 0 or less means no limit for now.
func NewAdjustable(bytesPerSec int64, minBurst int) *Limiter {
	l := &Limiter{l: rate.NewLimiter(rate.Inf, 1), minBurst: minBurst}
	l.SetRate(bytesPerSec)
	return l
}

// SetRate changes the limit (0 or less: none) for the transfers that wait
// from now on.
func (l *Limiter) SetRate(bytesPerSec int64) {
	if bytesPerSec <= 0 {
		l.l.SetLimit(rate.Inf)
		return
	}
	burst := max(bytesPerSec/10, int64(l.minBurst), 1)
	l.l.SetBurst(int(min(burst, 1<<30)))
	l.l.SetLimit(rate.Limit(bytesPerSec))
}

// Rate is the limit in bytes per second (0: none).
func (l *Limiter) Rate() int64 {
	if l == nil || l.l.Limit() == rate.Inf {
		return 0
	}
	return int64(l.l.Limit())
}

// Wait blocks until n more bytes may pass, in steps of at most the burst.
// It returns early with ctx's error.
func (l *Limiter) Wait(ctx context.Context, n int64) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		if l.l.Limit() == rate.Inf {
			return nil
		}
		k := min(n, int64(l.l.Burst()))
		if err := l.l.WaitN(ctx, int(k)); err != nil {
			return fmt.Errorf("throttle: waiting for %d bytes at %d bytes/s: %w", k, l.Rate(), err)
		}
		n -= k
	}
	return nil
}

// ReaderAt paces every read from r: each ReadAt waits for its length first.
func (l *Limiter) ReaderAt(ctx context.Context, r io.ReaderAt) io.ReaderAt {
	if l == nil {
		return r
	}
	return pacedReaderAt{ctx: ctx, l: l, r: r}
}

type pacedReaderAt struct {
	ctx context.Context
	l   *Limiter
	r   io.ReaderAt
}

func (p pacedReaderAt) ReadAt(b []byte, off int64) (int, error) {
	if err := p.l.Wait(p.ctx, int64(len(b))); err != nil {
		return 0, err
	}
	return p.r.ReadAt(b, off)
}
