package agent

import (
	"encoding/json"
	"net/http"

	"standby/internal/statusapi"
)

// BookmarkRequest is the body of the agent's bookmark and barrier calls.
type BookmarkRequest struct {
	ID    string `json:"id,omitempty"`
	Name  string `json:"name,omitempty"`
	Group string `json:"group,omitempty"`
}

// control adds the bookmark endpoints to the status mux. They are on the
// same local listener as status (loopback or a unix socket): whoever may
// read the agent's state may ask it for a bookmark.
func (a *Agent) control(mux *http.ServeMux) {
	decode := func(w http.ResponseWriter, r *http.Request) (BookmarkRequest, bool) {
		var req BookmarkRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return req, false
		}
		return req, true
	}
	fail := func(w http.ResponseWriter, status int, res any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(res)
	}
	mux.HandleFunc("POST /bookmark", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		res, err := a.Bookmark(r.Context(), req.Name)
		if err != nil {
			fail(w, http.StatusConflict, res)
			return
		}
		statusapi.WriteJSON(w, res)
	})
	mux.HandleFunc("POST /barrier/prepare", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		if err := a.Prepare(r.Context(), req.ID); err != nil {
			fail(w, http.StatusConflict, BookmarkResult{ID: req.ID, Aborted: true, Error: err.Error()})
			return
		}
		statusapi.WriteJSON(w, BookmarkResult{ID: req.ID})
	})
	mux.HandleFunc("POST /barrier/commit", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		res, err := a.Commit(req.ID, req.Name, req.Group)
		if err != nil {
			fail(w, http.StatusConflict, res)
			return
		}
		statusapi.WriteJSON(w, res)
	})
	mux.HandleFunc("POST /barrier/abort", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		_ = a.Abort(req.ID)
		statusapi.WriteJSON(w, BookmarkResult{ID: req.ID, Aborted: true})
	})
}
