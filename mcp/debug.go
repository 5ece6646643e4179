package mcp

// debug.go owns /debug/mcpz: what the server sends and to whom, each
// client's per-type versions (sent and acknowledged) and the last NACKs.

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

type debugView struct {
	Ready   bool              `json:"ready"`
	Types   []typeView        `json:"types"`
	Skipped map[string]string `json:"skipped"`
	Clients []clientView      `json:"clients"`
	Nacks   []nackView        `json:"nacks"`
}

type typeView struct {
	Type      string   `json:"type"`
	Version   string   `json:"version"`
	Resources int      `json:"resources"`
	Bytes     int      `json:"bytes"`
	Names     []string `json:"names,omitempty"`
}

type clientView struct {
	ID        uint64              `json:"id"`
	Node      string              `json:"node"`
	Peer      string              `json:"peer"`
	Connected time.Time           `json:"connected"`
	Types     map[string]typeSeen `json:"types"`
}

type typeSeen struct {
	Sent     string `json:"sentVersion"`
	Acked    string `json:"ackedVersion"`
	Pushes   int    `json:"pushes"`
	Nacks    int    `json:"nacks"`
	LastNack string `json:"lastNack,omitempty"`
}

type nackView struct {
	At      time.Time `json:"at"`
	Client  string    `json:"client"`
	Type    string    `json:"type"`
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Message string    `json:"message"`
}

// DebugHandler serves /debug/mcpz; ?names=1 lists every resource name.
func (s *Server) DebugHandler(w http.ResponseWriter, r *http.Request) {
	v := debugView{Types: []typeView{}, Skipped: map[string]string{}, Clients: []clientView{}}
	if snap := s.current.Load(); snap != nil {
		v.Ready = true
		for _, t := range []string{ServiceEntryType, WorkloadEntryType} {
			c := snap.types[t]
			tv := typeView{Type: t, Version: c.version, Resources: len(c.resources), Bytes: c.bytes}
			if r.URL.Query().Get("names") != "" {
				for _, it := range c.items {
					tv.Names = append(tv.Names, it.name)
				}
			}
			v.Types = append(v.Types, tv)
		}
		v.Skipped = snap.skipped
	}
	s.mu.Lock()
	for _, c := range s.clients {
		c.mu.Lock()
		cv := clientView{ID: c.id, Node: c.node, Peer: c.peer, Connected: c.connected, Types: map[string]typeSeen{}}
		for t, st := range c.types {
			cv.Types[t] = typeSeen{Sent: st.sentVersion, Acked: st.ackedVersion, Pushes: st.sent, Nacks: st.nacked, LastNack: st.lastNack}
		}
		c.mu.Unlock()
		v.Clients = append(v.Clients, cv)
	}
	v.Nacks = slices.Clone(s.nacks)
	s.mu.Unlock()
	slices.SortFunc(v.Clients, func(a, b clientView) int { return int(a.ID) - int(b.ID) })
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
