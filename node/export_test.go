package node

import "github.com/meshagent/meshagent/discovery"

// CurrentRecord lets the external tests see the record a node would send
// in its next hello.
func CurrentRecord(n *Node) (*discovery.Record, error) { return n.currentRecord() }

// TopicPeers lists the pubsub peers of a joined topic.
func TopicPeers(n *Node, topic string) []string {
	n.mu.Lock()
	t := n.topics[topic]
	n.mu.Unlock()
	var out []string
	for _, p := range t.ListPeers() {
		out = append(out, p.String()[40:])
	}
	return out
}
