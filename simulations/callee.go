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

// AnswerRaw replaces h's RPC handler (a node's decision function no
// longer runs) with one that reads each request and writes, unchecked,
// the frames answer returns for it, n counting requests from 1: a callee
// that sends what it likes, as a compromised agent would. It returns the
// count of requests answered. It serves both call protocols, one call per
// stream on wire.ProtocolRPC and call after call on wire.ProtocolRPC2.
func AnswerRaw(h host.Host, answer func(n int64, req *protocol.Envelope) [][]byte) *atomic.Int64 {
	var served atomic.Int64
	serve := func(once bool) network.StreamHandler {
		return func(s network.Stream) {
			defer s.Close()
			r := msgio.NewVarintReaderSize(s, 1<<20) // reads nothing past a frame
			w := msgio.NewVarintWriter(s)
			for {
				raw, err := r.ReadMsg()
				if err != nil {
					s.Reset()
					return
				}
				req, err := protocol.Open(raw, 1<<20, 1<<20)
				if err != nil {
					s.Reset()
					return
				}
				for _, f := range answer(served.Add(1), req) {
					if w.WriteMsg(f) != nil {
						s.Reset()
						return
					}
				}
				if once {
					return
				}
			}
		}
	}
	h.SetStreamHandler(wire.ProtocolRPC, serve(true))
	h.SetStreamHandler(wire.ProtocolRPC2, serve(false)) // call after call on a stream
	return &served
}

// AnswerWithErrors makes h answer every RPC with an error reply signed by
// id, whose code is code(n) for the n-th request (from 1): a callee that
// chooses its codes (AnswerRaw).
func AnswerWithErrors(h host.Host, id *trust.Identity, code func(n int64) trust.Code) *atomic.Int64 {
	return AnswerRaw(h, func(n int64, req *protocol.Envelope) [][]byte {
		out, err := protocol.Seal(id, &protocol.Envelope{Kind: protocol.KindError, RecipientPeer: req.Sender,
			Action: req.Action, CorrelationID: req.CorrelationID, ErrorCode: code(n), ErrorDetail: "no"}, time.Now())
		if err != nil {
			return nil
		}
		return [][]byte{out}
	})
}
