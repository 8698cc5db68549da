// Package refused remembers a node's final verdicts on relayed items by
// the hash of their bytes, so that the same bytes sent again cost a hash
// instead of their signature checks.
package refused

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Cache remembers what this node refused of the records, leaves and
// revocations peers relayed, by the hash of their bytes, so that the same
// bytes sent again cost a hash instead of their signature checks. Only
// verdicts that cannot turn into acceptance are kept (a bad signature
// stays bad, an expired credential stays expired, a sequence number once
// passed stays passed, the anchors do not change while the node runs);
// not-yet-valid, stale, unlisted and full are checked again. Bounded:
// past maxRefusals the oldest are forgotten.
type Cache struct {
	mu   sync.Mutex
	m    map[[32]byte]*trust.Error
	ring [][32]byte
	next int
}

const maxRefusals = 8192 // about 1 MiB

// New returns an empty cache.
func New() *Cache { return &Cache{m: map[[32]byte]*trust.Error{}} }

// Key hashes an item's parts, each with its length, and its kind.
func Key(kind string, b ...[]byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	var n [binary.MaxVarintLen64]byte
	for _, x := range b {
		// Each part with its length: bytes moved from one part to the
		// next (a record's last body byte into its signature) make
		// another key, so a broken copy's refusal is never taken for the
		// honest item's.
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(x)))])
		h.Write(x)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// Get returns the remembered refusal of key, or nil.
func (r *Cache) Get(key [32]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.m[key]; ok {
		return e
	}
	return nil
}

// Add remembers err for key when it is a final verdict.
func (r *Cache) Add(key [32]byte, err error) {
	te, ok := err.(*trust.Error)
	if !ok {
		return
	}
	switch te.Code {
	case trust.CodeNotYetValid, protocol.CodeStale, protocol.CodeUnlisted, trust.CodeFull, protocol.CodeDead, "":
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[key]; ok {
		return
	}
	if len(r.ring) < maxRefusals {
		r.ring = append(r.ring, key)
	} else {
		delete(r.m, r.ring[r.next])
		r.ring[r.next] = key
		r.next = (r.next + 1) % maxRefusals
	}
	r.m[key] = te
}
