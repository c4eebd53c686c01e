package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"standby/internal/statusapi"
)

// GroupBookmark takes one app-consistent bookmark across several machines
// (a consistency group): prepare every agent (freeze, hold writes), and
// only when all are held, mark and release them all. If any agent fails to
// prepare, every agent is released without a marker. Agents abort by
// themselves when the coordinator vanishes past their hold bound.
func GroupBookmark(ctx context.Context, agents []string, name, group string) ([]BookmarkResult, error) {
	if len(agents) == 0 {
		return nil, errors.New("group bookmark: no agents")
	}
	id := fmt.Sprintf("%s-%d", group, time.Now().UnixNano())
	if group == "" {
		id = fmt.Sprintf("bookmark-%d", time.Now().UnixNano())
	}
	req := BookmarkRequest{ID: id, Name: name, Group: group}
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	for i, addr := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = statusapi.Call(ctx, addr, "POST", "/barrier/prepare", req, nil)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, addr := range agents {
			_ = statusapi.Call(context.WithoutCancel(ctx), addr, "POST", "/barrier/abort", req, nil)
		}
		return nil, fmt.Errorf("group bookmark %s aborted, no marker was inserted: %w", id, err)
	}
	results := make([]BookmarkResult, len(agents))
	for i, addr := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = statusapi.Call(ctx, addr, "POST", "/barrier/commit", req, &results[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return results, fmt.Errorf("group bookmark %s: some agents did not mark (their hold bound passed?): %w", id, err)
	}
	return results, nil
}
