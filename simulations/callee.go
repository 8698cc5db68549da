//go:build meshsim

package simulations

import (
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// AnswerWithErrors makes h answer every RPC with an error reply signed by
// id, whose code is code(n) for the n-th request (from 1): a callee that
// chooses its codes, as a compromised agent would. It replaces h's RPC
// handler (a node's decision function no longer runs) and returns the
// count of requests answered.
func AnswerWithErrors(h host.Host, id *trust.Identity, code func(n int64) trust.Code) *atomic.Int64 {
	var served atomic.Int64
	h.SetStreamHandler(wire.ProtocolRPC, func(s network.Stream) {
		defer s.Close()
		raw, err := msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
		if err != nil {
			s.Reset()
			return
		}
		req, err := protocol.Open(raw, 1<<20, 1<<20)
		if err != nil {
			s.Reset()
			return
		}
		out, err := protocol.Seal(id, &protocol.Envelope{Kind: protocol.KindError, RecipientPeer: req.Sender,
			Action: req.Action, CorrelationID: req.CorrelationID, ErrorCode: code(served.Add(1)), ErrorDetail: "no"}, time.Now())
		if err == nil {
			err = msgio.NewVarintWriter(s).WriteMsg(out)
		}
		if err != nil {
			s.Reset()
		}
	})
	return &served
}
