package protocol

import (
	"unicode/utf8"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"google.golang.org/protobuf/encoding/protowire"
)

// readBody decodes an encoded EnvelopeBody into b as proto.Unmarshal does
// into an EnvelopeBodyOpen, unknown fields aside (skipped, not kept): the
// last occurrence of a field wins, a field of another wire type is
// skipped as unknown, strings must be UTF-8, and every occurrence of the
// token is kept, aliasing body (it is hashed, and copied when decoded).
// Everything else is copied. It spares the generated decoder's dispatch
// and the copy of the chain on every envelope; FuzzOpenMatchesFullDecode
// holds it to proto.Unmarshal.
func readBody(body []byte, b *protocolpb.EnvelopeBodyOpen) bool {
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 || num > protowire.MaxValidNumber || typ == protowire.EndGroupType {
			return false
		}
		body = body[n:]
		switch {
		case typ == protowire.VarintType && (num == 1 || num == 2 || num == 9 || num == 15):
			v, m := protowire.ConsumeVarint(body)
			if m < 0 {
				return false
			}
			switch num {
			case 1:
				b.Version = uint32(v)
			case 2:
				b.Kind = protocolpb.Kind(int32(v))
			case 9:
				b.Timestamp = int64(v)
			case 15:
				b.RetryAfterMs = int64(v)
			}
			body = body[m:]
		case typ == protowire.BytesType && num >= 3 && num <= 17 && num != 9 && num != 15:
			v, m := protowire.ConsumeBytes(body)
			if m < 0 {
				return false
			}
			body = body[m:]
			switch num {
			case 3:
				b.Sender = append([]byte{}, v...)
			case 4:
				b.RecipientPeer = append([]byte{}, v...)
			case 7:
				b.Payload = append([]byte{}, v...)
			case 10:
				b.Nonce = append([]byte{}, v...)
			case 11:
				b.CorrelationId = append([]byte{}, v...)
			case 12:
				b.Token = append(b.Token, v)
			default: // strings
				if !utf8.Valid(v) {
					return false
				}
				s := string(v)
				switch num {
				case 5:
					b.RecipientTopic = s
				case 6:
					b.Action = s
				case 8:
					b.ContentType = s
				case 13:
					b.ErrorCode = s
				case 14:
					b.ErrorDetail = s
				case 16:
					b.Traceparent = s
				case 17:
					b.Tracestate = s
				}
			}
		default:
			m := protowire.ConsumeFieldValue(num, typ, body)
			if m < 0 {
				return false
			}
			body = body[m:]
		}
	}
	return true
}
