package node

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log. It never holds bodies, keys or
// tokens.
type AuditRecord struct {
	Time          time.Time `json:"time"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	Direction     string    `json:"direction"` // in or out
	Kind          string    `json:"kind"`      // request, reply, error, message
	Sender        string    `json:"sender,omitempty"`
	Recipient     string    `json:"recipient,omitempty"`
	Action        string    `json:"action,omitempty"`
	Decision      string    `json:"decision"` // accept or reject
	Reason        string    `json:"reason,omitempty"`
	Detail        string    `json:"detail,omitempty"`
	LatencyMS     float64   `json:"latency_ms"`
}

type auditor struct {
	mu  sync.Mutex
	enc *json.Encoder // nil: no log, only the hook
	// hook, when set, sees every record (tests, the demo).
	hook func(AuditRecord)
}

func newAuditor(w io.Writer) *auditor {
	if w == nil || w == io.Discard {
		return &auditor{}
	}
	return &auditor{enc: json.NewEncoder(w)}
}

func (a *auditor) write(r AuditRecord) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.enc != nil {
		_ = a.enc.Encode(r) // an audit sink that fails is reported by its owner
	}
	if a.hook != nil {
		a.hook(r)
	}
}
