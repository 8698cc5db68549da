package node

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// sendLeave tells the mesh this node is stopping: on the registry topic,
// and directly to every connected peer, waiting (at most the admission
// timeout) for their acknowledgements so that the leave is out before the
// connections close.
func (n *Node) sendLeave() {
	msg := &protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Leave{Leave: n.own.Leave()}}
	_ = n.publishRegistry(msg)
	b, err := proto.Marshal(msg)
	if err != nil {
		return
	}
	h := n.host()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range h.Network().Peers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := h.NewStream(ctx, p, wire.ProtocolLeave)
			if err != nil {
				return
			}
			defer s.Close()
			dl, _ := ctx.Deadline()
			_ = s.SetDeadline(dl)
			if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
				s.Reset()
				return
			}
			var ack [1]byte
			_, _ = s.Read(ack[:])
		}()
	}
	wg.Wait()
}

// handleLeave applies a leave delivered directly, relays it, and acks.
func (n *Node) handleLeave(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	raw, err := msgio.NewVarintReaderSize(s, 1024).ReadMsg()
	if err != nil {
		s.Reset()
		return
	}
	var rm protocolpb.RegistryMessage
	l := (*protocolpb.Leave)(nil)
	if proto.Unmarshal(raw, &rm) == nil {
		if x, ok := rm.Msg.(*protocolpb.RegistryMessage_Leave); ok {
			l = x.Leave
		}
	}
	news, err := n.records.ApplyLeave(l)
	if code := trust.CodeOf(err); forwarderFault[code] {
		n.gate.Penalize(s.Conn().RemotePeer(), code)
		s.Reset()
		return
	}
	if news {
		go func() { _ = n.publishRegistry(&rm) }()
	}
	_, _ = s.Write([]byte{1})
}
