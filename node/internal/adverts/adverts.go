// Package adverts keeps this agent's advertisement of the actions it
// serves, serves it to admitted peers on wire.ProtocolAdvert, and fetches
// other agents' advertisements on demand, verified against the digest of
// their signed records and cached by digest.
package adverts

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/frame"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Cache bounds: at most CacheEntries advertisements and CacheBytes of
// them (their signed size), least recently used out first. 1 MiB is 16
// advertisements of the largest size, or all of 64 typical ones (a few
// KiB each); a node that never fetches holds none.
const (
	CacheEntries = 64
	CacheBytes   = 1 << 20
)

// Deps is what the service needs of the node.
type Deps struct {
	Identity *trust.Identity
	Registry *discovery.Registry
	Host     func() host.Host
	Clock    func() time.Time
	// Timeout bounds one fetch.
	Timeout time.Duration
	// ServeAllowed reports whether p may have another answer now.
	ServeAllowed func(p peer.ID) bool
	// Reach makes p reachable and admitted before a fetch (its record's
	// addresses, admission).
	Reach func(ctx context.Context, p peer.ID) error
	// Changed is called after the advertisement changed (a new record).
	Changed func()
}

// Service is the advertisement service. Its methods are safe for
// concurrent use.
type Service struct {
	d Deps

	mu      sync.Mutex
	actions map[string]discovery.Action // what this agent advertises
	raw     []byte                      // the signed advertisement, encoded
	names   []string
	digest  [32]byte

	cmu   sync.Mutex
	cache map[[32]byte]*cached
	bytes int
	tick  uint64
}

type cached struct {
	ad   *discovery.Advertisement
	used uint64
}

// New returns the service; it advertises nothing yet.
func New(d Deps) *Service {
	return &Service{d: d, actions: map[string]discovery.Action{}, cache: map[[32]byte]*cached{}}
}

// Set advertises a (replacing an action of the same scope), or with
// remove, stops advertising the scope. A change re-signs the
// advertisement and calls Changed; a refused one changes nothing.
func (s *Service) Set(a discovery.Action, remove bool) error {
	s.mu.Lock()
	next := maps.Clone(s.actions)
	if remove {
		if _, ok := next[a.Scope]; !ok {
			s.mu.Unlock()
			return nil
		}
		delete(next, a.Scope)
	} else {
		if err := discovery.CheckAction(a); err != nil {
			s.mu.Unlock()
			return err
		}
		next[a.Scope] = a
	}
	var raw []byte
	var names []string
	var digest [32]byte
	if len(next) > 0 {
		ad, sum, ns, err := discovery.SignAdvert(s.d.Identity, slices.Collect(maps.Values(next)))
		if err != nil {
			s.mu.Unlock()
			return err
		}
		if raw, err = proto.Marshal(ad); err != nil {
			s.mu.Unlock()
			return err
		}
		names, digest = ns, sum
	}
	same := digest == s.digest
	s.actions, s.raw, s.names, s.digest = next, raw, names, digest
	s.mu.Unlock()
	if !same && s.d.Changed != nil {
		s.d.Changed()
	}
	return nil
}

// Advertised returns the scopes advertised (sorted) and the digest of the
// advertisement, for this agent's record.
func (s *Service) Advertised() ([]string, [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names, s.digest
}

// own returns this agent's advertisement.
func (s *Service) own() *discovery.Advertisement {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &discovery.Advertisement{Agent: s.d.Identity.Public(), Digest: s.digest, Size: len(s.raw)}
	for _, name := range s.names {
		out.Actions = append(out.Actions, s.actions[name])
	}
	return out
}

// Handle serves this agent's signed advertisement to an admitted, listed
// peer within its serving limit; anyone else gets the stream reset unread.
func (s *Service) Handle(st network.Stream) {
	defer st.Close()
	p := st.Conn().RemotePeer()
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil || s.d.Registry.Admit(k, s.d.Clock()) != nil || !s.d.ServeAllowed(p) {
		st.Reset()
		return
	}
	_ = st.SetDeadline(time.Now().Add(s.d.Timeout))
	s.mu.Lock()
	raw := s.raw
	s.mu.Unlock()
	if msgio.NewVarintWriter(st).WriteMsg(raw) != nil {
		st.Reset()
	}
}

// Fetch returns the advertisement of agent, verified against the digest
// of its record in the registry: from the cache, or from the agent. An
// agent whose record advertises nothing has an empty advertisement.
func (s *Service) Fetch(ctx context.Context, agent trust.PublicKey) (*discovery.Advertisement, error) {
	if agent.Equal(s.d.Identity.Public()) {
		return s.own(), nil
	}
	rec := s.d.Registry.Record(agent)
	if rec == nil {
		return nil, protocol.Reject(protocol.CodeUnlisted, "%s is not in the registry", agent)
	}
	digest, ok := rec.AdvertDigest()
	if !ok {
		return &discovery.Advertisement{Agent: agent}, nil
	}
	if ad := s.lookup(digest); ad != nil {
		return ad, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.d.Timeout)
	defer cancel()
	p := agent.PeerID()
	if err := s.d.Reach(ctx, p); err != nil {
		return nil, protocol.Reject(protocol.CodeUnavailable, "%v", err)
	}
	st, err := s.d.Host().NewStream(ctx, p, wire.ProtocolAdvert)
	if err != nil {
		return nil, protocol.Reject(protocol.CodeUnavailable, "open stream to %s: %v", p, err)
	}
	defer st.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(deadline)
	}
	raw, err := frame.ReadGrowing(st, discovery.MaxAdvertSize)
	if err != nil {
		st.Reset()
		return nil, protocol.Reject(protocol.CodeUnavailable, "advertisement of %s: %v", p, err)
	}
	var wad protocolpb.Advert
	if err := proto.Unmarshal(raw, &wad); err != nil {
		return nil, protocol.Reject(trust.CodeMalformed, "advertisement of %s: %v", p, err)
	}
	ad, err := discovery.VerifyAdvert(&wad, rec)
	if err != nil {
		return nil, err
	}
	s.store(ad)
	return ad, nil
}

// Cached reports how many advertisements the cache holds and their size.
func (s *Service) Cached() (n, size int) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return len(s.cache), s.bytes
}

func (s *Service) lookup(digest [32]byte) *discovery.Advertisement {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	c := s.cache[digest]
	if c == nil {
		return nil
	}
	s.tick++
	c.used = s.tick
	return c.ad
}

// store caches a verified advertisement, evicting the least recently
// used past CacheEntries or CacheBytes.
func (s *Service) store(ad *discovery.Advertisement) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if _, ok := s.cache[ad.Digest]; ok || ad.Size > CacheBytes {
		return
	}
	for len(s.cache) >= CacheEntries || s.bytes+ad.Size > CacheBytes {
		var oldest [32]byte
		var min uint64 = ^uint64(0)
		for k, c := range s.cache {
			if c.used < min {
				oldest, min = k, c.used
			}
		}
		s.bytes -= s.cache[oldest].ad.Size
		delete(s.cache, oldest)
	}
	s.tick++
	s.cache[ad.Digest] = &cached{ad: ad, used: s.tick}
	s.bytes += ad.Size
}
