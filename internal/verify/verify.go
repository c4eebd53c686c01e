// Package verify compares a source disk with its replica by block
// fingerprints, either as two files or through a running agent and master
// target (waiting until the pair has drained).
package verify

import (
	"context"
	"errors"
	"fmt"
	"time"

	"standby/internal/agent"
	"standby/internal/blockdev"
	"standby/internal/capture"
	"standby/internal/mastertarget"
	"standby/internal/statusapi"
)

// DefaultBlockSize is the comparison granularity.
const DefaultBlockSize = 64 << 10

// Result is the comparison of one disk.
type Result struct {
	Disk      string          `json:"disk,omitempty"`
	Source    string          `json:"source"`
	Replica   string          `json:"replica"`
	Size      int64           `json:"size"`
	Identical bool            `json:"identical"`
	Differ    []capture.Range `json:"differing_ranges,omitempty"`
	DiffBytes int64           `json:"differing_bytes"`
	Error     string          `json:"error,omitempty"`
}

// Files compares two disks or images.
func Files(ctx context.Context, source, replica string, blockSize int64) (Result, error) {
	if blockSize <= 0 {
		blockSize = DefaultBlockSize
	}
	res := Result{Source: source, Replica: replica}
	a, err := blockdev.Open(source, true)
	if err != nil {
		return res, fmt.Errorf("verify: opening source: %w", err)
	}
	defer a.Close()
	b, err := blockdev.Open(replica, true)
	if err != nil {
		return res, fmt.Errorf("verify: opening replica: %w", err)
	}
	defer b.Close()
	res.Size = a.Size()
	if a.Size() != b.Size() {
		return res, fmt.Errorf("verify: source %s is %d bytes, replica %s is %d bytes", source, a.Size(), replica, b.Size())
	}
	ranges, err := capture.Compare(ctx, a, b, a.Size(), blockSize)
	if err != nil {
		return res, fmt.Errorf("verify: comparing: %w", err)
	}
	res.Differ = ranges
	for _, r := range ranges {
		res.DiffBytes += r.Len
	}
	res.Identical = len(ranges) == 0
	return res, nil
}

// Pair waits until the agent reports everything durable at the master
// target and the master target has applied it, then compares each disk
// with its replica. Both must be readable from here (same host, or shared
// storage): the comparison reads the files themselves.
//
// If the source was written while it was being compared (the agent's last
// sequence moved), differences may be those new writes: the comparison is
// repeated after the next drain, until the deadline.
func Pair(ctx context.Context, agentAddr, mtAddr string, blockSize int64, timeout time.Duration) ([]Result, error) {
	deadline := time.Now().Add(timeout)
	for {
		res, seq, err := pairOnce(ctx, agentAddr, mtAddr, blockSize, deadline)
		if err != nil || allIdentical(res) {
			return res, err
		}
		var now agent.Status
		if statusapi.Fetch(ctx, agentAddr, &now) != nil || now.LastSeq == seq || time.Now().After(deadline) {
			return res, nil
		}
	}
}

func allIdentical(rs []Result) bool {
	for _, r := range rs {
		if !r.Identical {
			return false
		}
	}
	return true
}

func pairOnce(ctx context.Context, agentAddr, mtAddr string, blockSize int64, deadline time.Time) ([]Result, uint64, error) {
	var as agent.Status
	var ms mastertarget.MachineStatus
	for {
		// A role that is restarting does not answer for a moment: retry
		// until the deadline rather than fail on the first refusal.
		var mt mastertarget.Status
		errA := statusapi.Fetch(ctx, agentAddr, &as)
		errM := statusapi.Fetch(ctx, mtAddr, &mt)
		if err := errors.Join(errA, errM); err != nil {
			if time.Now().After(deadline) {
				return nil, 0, err
			}
			select {
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		found := false
		for _, m := range mt.Machines {
			if m.Machine == as.Machine {
				ms, found = m, true
			}
		}
		if found && as.Drained && ms.AppliedSeq >= as.LastSeq && allConsistent(ms) {
			break
		}
		if time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("verify: pair not drained by %s (agent last seq %d, durable %d, master target applied %d)", deadline.Format(time.RFC3339), as.LastSeq, as.DurableSeq, ms.AppliedSeq)
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	var out []Result
	var errs []error
	for i, d := range as.Disks {
		if i >= len(ms.Disks) {
			return nil, 0, errors.New("verify: master target has fewer disks than the agent")
		}
		r, err := Files(ctx, d.Path, ms.Disks[i].Replica, blockSize)
		r.Disk = d.Name
		if err != nil {
			r.Error = err.Error()
			errs = append(errs, err)
		}
		out = append(out, r)
	}
	return out, as.LastSeq, errors.Join(errs...)
}

func allConsistent(m mastertarget.MachineStatus) bool {
	for _, d := range m.Disks {
		if !d.Consistent {
			return false
		}
	}
	return true
}
