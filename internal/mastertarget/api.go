package mastertarget

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"standby/internal/points"
	"standby/internal/statusapi"
)

// PointInfo is a point as the API shows it.
type PointInfo struct {
	points.Point
	Machine string `json:"machine"`
}

// api adds the recovery-point endpoints to the status mux (local listener).
func (s *Server) api(mux *http.ServeMux) {
	mux.HandleFunc("GET /machines/{m}/points", func(w http.ResponseWriter, r *http.Request) {
		m, ok := s.lookup(w, r.PathValue("m"))
		if !ok {
			return
		}
		m.dropUnrecoverable() // list only points a view can still show
		var out []PointInfo
		for _, p := range m.points.List() {
			out = append(out, PointInfo{Point: p, Machine: m.name})
		}
		statusapi.WriteJSON(w, out)
	})
	mux.HandleFunc("POST /machines/{m}/points/{id}/tag", func(w http.ResponseWriter, r *http.Request) {
		m, ok := s.lookup(w, r.PathValue("m"))
		if !ok {
			return
		}
		var req struct {
			Name string `json:"name"`
		}
		if err := decodeBody(r, &req); err != nil || req.Name == "" {
			statusapi.ErrorJSON(w, http.StatusBadRequest, "a tag needs a name")
			return
		}
		p, err := m.resolvePoint(r.PathValue("id"))
		if err != nil {
			pointError(w, err)
			return
		}
		p, err = m.points.Rename(p.ID, req.Name)
		if err != nil {
			pointError(w, err)
			return
		}
		statusapi.WriteJSON(w, PointInfo{Point: p, Machine: m.name})
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		var out []Event
		s.mu.Lock()
		ms := make([]*machine, 0, len(s.machines))
		for _, m := range s.machines {
			ms = append(ms, m)
		}
		s.mu.Unlock()
		for _, m := range ms {
			m.mu.Lock()
			out = append(out, m.events...)
			m.mu.Unlock()
		}
		statusapi.WriteJSON(w, out)
	})
	s.viewAPI(mux)
}

func (s *Server) lookup(w http.ResponseWriter, name string) (*machine, bool) {
	s.mu.Lock()
	m, ok := s.machines[name]
	s.mu.Unlock()
	if !ok {
		statusapi.ErrorJSON(w, http.StatusNotFound, "no machine "+strconv.Quote(name)+" on this master target")
	}
	return m, ok
}

// resolvePoint understands an ID, "latest", or an RFC 3339 time (the
// newest consistent point at or before it).
func (m *machine) resolvePoint(spec string) (points.Point, error) {
	switch {
	case spec == "" || spec == "latest":
		return m.points.Latest()
	case strings.ContainsAny(spec, "T:"):
		t, err := time.Parse(time.RFC3339Nano, spec)
		if err != nil {
			return points.Point{}, errors.Join(points.ErrNoPoint, err)
		}
		return m.points.AtOrBefore(t)
	}
	id, err := strconv.ParseUint(spec, 10, 64)
	if err != nil {
		return points.Point{}, errors.Join(points.ErrNoPoint, errors.New("a point is an ID, \"latest\" or an RFC 3339 time"))
	}
	return m.points.Get(id)
}

func pointError(w http.ResponseWriter, err error) {
	if errors.Is(err, points.ErrNoPoint) {
		statusapi.ErrorJSON(w, http.StatusNotFound, err.Error())
		return
	}
	statusapi.ErrorJSON(w, http.StatusInternalServerError, err.Error())
}
