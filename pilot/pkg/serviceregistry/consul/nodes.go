package consul

// nodes.go owns the node detector: one blocking query for the node list.
// A write to a node (its address, its meta) moves neither the services
// index nor the checks index, so neither other watch wakes: Consul (1.16 to 1.22,
// catalogInsertNode) moves only the nodes index and the own index of each
// service on the node. Instances that take their node's address, and
// localities from node meta, would keep stale values until their service
// changed for another reason (consul-esm re-registering an external node
// at a new address, a re-addressed agent).

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// readNodes is one blocking read of the node list. Each node written after
// the last read of a service on it marks that service; the read must pass
// the node's write.
func (c *Controller) readNodes(ctx context.Context, req request) (uint64, func(), error) {
	var nodes []*api.Node
	meta, err := c.consul.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		var m *api.QueryMeta
		var err error
		nodes, m, err = c.consul.Catalog().Nodes(q)
		return m, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("list nodes: %w", err)
	}
	return meta.LastIndex, func() {
		for _, n := range nodes {
			for _, name := range c.store.onNode(n.Node) {
				if read, ok := c.store.readIndex(name); ok && n.ModifyIndex > read {
					c.dirty.mark(n.ModifyIndex, name)
				}
			}
		}
	}, nil
}
