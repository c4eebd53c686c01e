package mastertarget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"standby/internal/imagefmt"
	"standby/internal/journal"
	"standby/internal/localnet"
	"standby/internal/nbd"
	"standby/internal/points"
	"standby/internal/statusapi"
)

// ViewExport is one disk of an open view.
type ViewExport struct {
	Disk string `json:"disk"`
	URI  string `json:"uri"`
	Size int64  `json:"size"`
}

// ViewInfo describes an open point-in-time view of a machine.
type ViewInfo struct {
	ID      string       `json:"id"`
	Machine string       `json:"machine"`
	Point   points.Point `json:"point"`
	Opened  time.Time    `json:"opened"`
	Exports []ViewExport `json:"exports"`
	Error   string       `json:"error,omitempty"`
}

// view is a set of copy-on-write views (one per disk) of a machine at a
// point, served over NBD while replication goes on.
type view struct {
	info   ViewInfo
	m      *machine
	disks  []*journal.View
	ln     net.Listener
	cancel context.CancelFunc
	done   chan struct{}
}

// viewBackend adapts a journal view to an NBD export.
type viewBackend struct{ v *journal.View }

func (b viewBackend) Size() int64 { return b.v.Size() }
func (b viewBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := b.v.ReadAt(p, off)
	return err
}
func (b viewBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	_, err := b.v.WriteAt(p, off)
	return err
}

// Flush has nothing to make durable: a view's writes live in a scratch
// file that is thrown away with the view.
func (b viewBackend) Flush(context.Context) error { return nil }
func (b viewBackend) Trim(ctx context.Context, off, n int64, fua bool) error {
	return b.WriteZeroes(ctx, off, n, fua, false)
}
func (b viewBackend) WriteZeroes(_ context.Context, off, n int64, _, _ bool) error {
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := b.v.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// waitReplayed waits until the apply loop has replayed, after a restart,
// every record it had applied before it.
func (m *machine) waitReplayed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		m.mu.Lock()
		applied, to := m.live.AppliedSeq, m.replayTo
		m.mu.Unlock()
		if applied >= to {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("machine %s is still replaying its intake after a restart (applied seq %d of %d): try again shortly", m.name, applied, to)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openView opens every disk of m at point p and serves them over NBD.
func (s *Server) openView(m *machine, p points.Point) (*view, error) {
	if err := m.waitReplayed(time.Minute); err != nil {
		return nil, err
	}
	if !p.Consistent {
		return nil, fmt.Errorf("point %d (%s) is not consistent: it was taken while a disk was resyncing", p.ID, p.Time.Format(time.RFC3339))
	}
	s.mu.Lock()
	s.viewSeq++
	id := fmt.Sprintf("%s-p%d-%d", m.name, p.ID, s.viewSeq)
	s.mu.Unlock()
	dir := filepath.Join(s.cfg.DataDir, ".views", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("view %s: %w", id, err)
	}
	v := &view{info: ViewInfo{ID: id, Machine: m.name, Point: p, Opened: time.Now()}, m: m, done: make(chan struct{})}
	fail := func(err error) (*view, error) {
		for _, d := range v.disks {
			d.Close()
		}
		os.RemoveAll(dir)
		return nil, err
	}
	for i, d := range m.layout {
		jv, err := m.journal.OpenView(i, p.Seq, filepath.Join(dir, d.Name+".scratch"))
		if err != nil {
			return fail(fmt.Errorf("opening view of %s at point %d: %w", d.Name, p.ID, err))
		}
		v.disks = append(v.disks, jv)
	}
	var exports []*nbd.Export
	for i, d := range m.layout {
		exports = append(exports, &nbd.Export{Name: d.Name, Description: fmt.Sprintf("%s/%s at point %d (%s)", m.name, d.Name, p.ID, p.Time.Format(time.RFC3339)), Backend: viewBackend{v.disks[i]}})
	}
	var ln net.Listener
	var err error
	// A view is served without TLS or login: this host only (localnet).
	if s.cfg.ViewListen != "" {
		ln, err = localnet.ListenTCP("view NBD export", s.cfg.ViewListen)
	} else {
		ln, err = localnet.ListenUnix("view NBD export", filepath.Join(dir, "nbd.sock"), 0o660)
	}
	if err != nil {
		return fail(fmt.Errorf("view %s: NBD listener: %w", id, err))
	}
	v.ln = ln
	for i, d := range m.layout {
		uri := fmt.Sprintf("nbd://%s/%s", ln.Addr().String(), d.Name)
		if ln.Addr().Network() == "unix" {
			uri = fmt.Sprintf("nbd+unix:///%s?socket=%s", d.Name, ln.Addr().String())
		}
		v.info.Exports = append(v.info.Exports, ViewExport{Disk: d.Name, URI: uri, Size: v.disks[i].Size()})
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	srv := &nbd.Server{Logger: s.log.With("view", id), Exports: func() []*nbd.Export { return exports }}
	go func() {
		defer close(v.done)
		if err := srv.Serve(ctx, ln); err != nil {
			s.log.Error("view NBD server", "view", id, "err", err)
		}
	}()
	s.mu.Lock()
	s.views[id] = v
	s.mu.Unlock()
	s.log.Info("view opened", "view", id, "machine", m.name, "point", p.ID, "seq", p.Seq, "time", p.Time)
	return v, nil
}

func (s *Server) closeView(id string) error {
	s.mu.Lock()
	v, ok := s.views[id]
	delete(s.views, id)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("no view %q", id)
	}
	v.cancel()
	<-v.done
	var errs error
	for _, d := range v.disks {
		errs = errors.Join(errs, d.Close())
	}
	errs = errors.Join(errs, os.RemoveAll(filepath.Join(s.cfg.DataDir, ".views", id)))
	s.log.Info("view closed", "view", id)
	return errs
}

// closeViewsOf closes the views of one machine.
func (s *Server) closeViewsOf(m *machine) {
	s.mu.Lock()
	var ids []string
	for id, v := range s.views {
		if v.m == m {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		_ = s.closeView(id)
	}
}

func (s *Server) closeAllViews() {
	s.mu.Lock()
	ids := make([]string, 0, len(s.views))
	for id := range s.views {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		_ = s.closeView(id)
	}
}

func (s *Server) listViews() []ViewInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ViewInfo, 0, len(s.views))
	for _, v := range s.views {
		out = append(out, v.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ExportJob materialises one disk at a point into an image file.
type ExportJob struct {
	ID       string            `json:"id"`
	Machine  string            `json:"machine"`
	Disk     string            `json:"disk"`
	Point    points.Point      `json:"point"`
	Format   string            `json:"format"`
	Path     string            `json:"path"`
	Progress imagefmt.Progress `json:"progress"`
	Done     bool              `json:"done"`
	Error    string            `json:"error,omitempty"`
	Files    []string          `json:"files,omitempty"`
	Started  time.Time         `json:"started"`
	Took     time.Duration     `json:"took_ns,omitempty"`

	finished chan struct{} // closed when Done is set
}

type exportJobs struct {
	mu   sync.Mutex
	next int
	jobs map[string]*ExportJob
}

func (s *Server) startExport(m *machine, p points.Point, diskName, format, path string) (*ExportJob, error) {
	f, err := imagefmt.ParseFormat(format)
	if err != nil {
		return nil, err
	}
	if !p.Consistent {
		return nil, fmt.Errorf("point %d is not consistent: it was taken while a disk was resyncing", p.ID)
	}
	if err := m.waitReplayed(time.Minute); err != nil {
		return nil, err
	}
	idx := -1
	for i, d := range m.layout {
		if d.Name == diskName || (diskName == "" && len(m.layout) == 1) {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("machine %s has no disk %q (give --disk)", m.name, diskName)
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("export path %q must be absolute (it is written by the master target)", path)
	}
	scratch := filepath.Join(s.cfg.DataDir, ".views", fmt.Sprintf("export-%d.scratch", time.Now().UnixNano()))
	if err := os.MkdirAll(filepath.Dir(scratch), 0o700); err != nil {
		return nil, err
	}
	jv, err := m.journal.OpenView(idx, p.Seq, scratch)
	if err != nil {
		return nil, fmt.Errorf("opening point %d: %w", p.ID, err)
	}
	s.exports.mu.Lock()
	s.exports.next++
	job := &ExportJob{ID: strconv.Itoa(s.exports.next), Machine: m.name, Disk: m.layout[idx].Name, Point: p, Format: string(f), Path: path, Started: time.Now(), finished: make(chan struct{})}
	s.exports.jobs[job.ID] = job
	s.exports.mu.Unlock()
	go func() {
		defer jv.Close()
		res, err := imagefmt.Write(context.Background(), jv, f, path, imagefmt.Options{Logger: s.log, Progress: func(pr imagefmt.Progress) {
			s.exports.mu.Lock()
			job.Progress = pr
			s.exports.mu.Unlock()
		}})
		s.exports.mu.Lock()
		defer s.exports.mu.Unlock()
		defer close(job.finished)
		job.Done = true
		job.Took = time.Since(job.Started)
		if err != nil {
			job.Error = err.Error()
			s.log.Error("export failed", "job", job.ID, "err", err)
			return
		}
		job.Files = res.Files
		s.log.Info("export done", "job", job.ID, "path", res.Path, "took", job.Took)
	}()
	return job, nil
}

func (s *Server) exportJob(id string) (ExportJob, bool) {
	s.exports.mu.Lock()
	defer s.exports.mu.Unlock()
	j, ok := s.exports.jobs[id]
	if !ok {
		return ExportJob{}, false
	}
	return *j, true
}

func decodeBody(r *http.Request, v any) error {
	return json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<16)).Decode(v)
}

// ViewRequest opens a view or starts an export.
type ViewRequest struct {
	Point  string `json:"point"` // ID, "latest" or RFC 3339 time
	Disk   string `json:"disk,omitempty"`
	Format string `json:"format,omitempty"`
	Path   string `json:"path,omitempty"`
}

// pointRequest decodes a view or export request and resolves its machine
// and point, answering the client itself when either is wrong.
func (s *Server) pointRequest(w http.ResponseWriter, r *http.Request) (*machine, ViewRequest, points.Point, bool) {
	var req ViewRequest
	m, ok := s.lookup(w, r.PathValue("m"))
	if !ok {
		return nil, req, points.Point{}, false
	}
	if err := decodeBody(r, &req); err != nil {
		statusapi.ErrorJSON(w, http.StatusBadRequest, err.Error())
		return nil, req, points.Point{}, false
	}
	p, err := m.resolvePoint(req.Point)
	if err != nil {
		pointError(w, err)
		return nil, req, points.Point{}, false
	}
	return m, req, p, true
}

func (s *Server) viewAPI(mux *http.ServeMux) {
	mux.HandleFunc("POST /machines/{m}/views", func(w http.ResponseWriter, r *http.Request) {
		m, _, p, ok := s.pointRequest(w, r)
		if !ok {
			return
		}
		v, err := s.openView(m, p)
		if err != nil {
			viewError(w, err)
			return
		}
		statusapi.WriteJSON(w, v.info)
	})
	mux.HandleFunc("GET /views", func(w http.ResponseWriter, r *http.Request) {
		statusapi.WriteJSON(w, s.listViews())
	})
	mux.HandleFunc("DELETE /views/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.closeView(r.PathValue("id")); err != nil {
			statusapi.ErrorJSON(w, http.StatusNotFound, err.Error())
			return
		}
		statusapi.WriteJSON(w, map[string]string{"closed": r.PathValue("id")})
	})
	mux.HandleFunc("POST /machines/{m}/exports", func(w http.ResponseWriter, r *http.Request) {
		m, req, p, ok := s.pointRequest(w, r)
		if !ok {
			return
		}
		job, err := s.startExport(m, p, req.Disk, req.Format, req.Path)
		if err != nil {
			viewError(w, err)
			return
		}
		statusapi.WriteJSON(w, job)
	})
	// ?wait=DURATION (at most 10s) answers as soon as the job is done, or
	// after that long with its progress: a client learns of the end at
	// once instead of at its next poll.
	mux.HandleFunc("GET /exports/{id}", func(w http.ResponseWriter, r *http.Request) {
		j, ok := s.exportJob(r.PathValue("id"))
		if !ok {
			statusapi.ErrorJSON(w, http.StatusNotFound, "no export job "+r.PathValue("id"))
			return
		}
		if ws := r.URL.Query().Get("wait"); ws != "" && !j.Done {
			d, err := time.ParseDuration(ws)
			if err != nil || d < 0 {
				statusapi.ErrorJSON(w, http.StatusBadRequest, fmt.Sprintf("wait=%q: want a duration such as 500ms", ws))
				return
			}
			t := time.NewTimer(min(d, 10*time.Second))
			defer t.Stop()
			select {
			case <-j.finished:
			case <-t.C:
			case <-r.Context().Done():
				return
			}
			j, _ = s.exportJob(j.ID)
		}
		statusapi.WriteJSON(w, j)
	})
}

func viewError(w http.ResponseWriter, err error) {
	if errors.Is(err, journal.ErrPointGone) || errors.Is(err, points.ErrNoPoint) {
		statusapi.ErrorJSON(w, http.StatusNotFound, err.Error())
		return
	}
	statusapi.ErrorJSON(w, http.StatusBadRequest, err.Error())
}
