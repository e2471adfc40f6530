package broker

import (
	"errors"
	"fmt"
	"net/http"
)

// httpHandler serves:
//
//	/metrics  Prometheus metrics of this node
//	/healthz  200 while the process serves
//	/readyz   200 when the node is a voter with a known Raft leader and a
//	          lease (it can take writes for the segments it leads), else 503
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// ready reports why the node cannot serve writes, or nil.
func (s *Server) ready() error {
	if !s.serving.Load() {
		return errors.New("starting: joining or bootstrapping the cluster")
	}
	leader, _ := s.raft.Leader()
	switch {
	case leader == 0:
		return fmt.Errorf("no raft leader known")
	case !s.leaseValid():
		return ErrNoLease
	}
	return nil
}
