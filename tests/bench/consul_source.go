package bench

import (
	"context"
	"fmt"
	"iter"

	"github.com/hashicorp/consul/api"
)

// txnOps is Consul's limit on operations in one transaction.
const txnOps = 128

// ConsulSource holds the dataset in a real Consul catalog: every instance is
// a catalog registration on an external node with one service check.
type ConsulSource struct {
	Client *api.Client
	Data   Dataset
}

func (c *ConsulSource) checkID(in Instance) string { return "health:" + c.Data.ID(in) }

// Load registers every node, instance and passing check.
func (c *ConsulSource) Load(ctx context.Context) error {
	var ops api.TxnOps
	for i := 0; i < c.Data.N; i++ {
		for j := 0; j < c.Data.M; j++ {
			ops = append(ops, c.registerOps(Instance{i, j})...)
		}
	}
	return c.loadOps(ctx, ops)
}

// registerOps registers one instance with a passing check (two operations).
func (c *ConsulSource) registerOps(in Instance) api.TxnOps {
	d := c.Data
	return api.TxnOps{
		{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: d.Node(in), Service: api.AgentService{
			ID: d.ID(in), Service: d.Name(in.Svc), Address: d.IP(in), Port: Port,
			Tags: []string{"version=" + d.Version(in)}, Meta: map[string]string{"protocol": "http", "zone": d.Zone(in)},
		}}},
		{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(in, api.HealthPassing)}},
	}
}

// loadOps registers the dataset's nodes, then applies ops in transactions of
// at most 128 operations on 4 workers (ops come in pairs; a pair never splits).
func (c *ConsulSource) loadOps(ctx context.Context, ops api.TxnOps) error {
	d := c.Data
	var nodes api.TxnOps
	for k := 0; k < d.Nodes(); k++ {
		nodes = append(nodes, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet,
			Node: api.Node{Node: nodeName(k), Address: "127.0.0.1"}}})
	}
	for b := range chunks(nodes) {
		if err := c.txn(ctx, b); err != nil {
			return fmt.Errorf("register nodes: %w", err)
		}
	}
	err := inParallel(4, chunks(ops), func(b api.TxnOps) error { return c.txn(ctx, b) })
	if err != nil {
		return fmt.Errorf("load %d×%d instances into Consul: %w", d.N, d.M, err)
	}
	return nil
}

// chunks splits ops into transactions of at most txnOps operations.
func chunks(ops api.TxnOps) iter.Seq[api.TxnOps] {
	return func(yield func(api.TxnOps) bool) {
		for len(ops) > 0 {
			n := min(len(ops), txnOps)
			if !yield(ops[:n]) {
				return
			}
			ops = ops[n:]
		}
	}
}

func (c *ConsulSource) check(in Instance, status string) api.HealthCheck {
	return api.HealthCheck{Node: c.Data.Node(in), CheckID: c.checkID(in), Name: "bench health",
		ServiceID: c.Data.ID(in), Status: status}
}

// SetHealthy flips one instance's check: one Consul write.
func (c *ConsulSource) SetHealthy(ctx context.Context, in Instance, healthy bool) error {
	status := api.HealthCritical
	if healthy {
		status = api.HealthPassing
	}
	return c.txn(ctx, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(in, status)}}})
}

// SetRegistered deregisters one instance (its service and check go in one
// write) or registers it again with a passing check.
func (c *ConsulSource) SetRegistered(ctx context.Context, in Instance, registered bool) error {
	if registered {
		return c.txn(ctx, c.registerOps(in))
	}
	return c.txn(ctx, api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: c.Data.Node(in),
		Service: api.AgentService{ID: c.Data.ID(in), Service: c.Data.Name(in.Svc)}}}})
}

func (c *ConsulSource) txn(ctx context.Context, ops api.TxnOps) error {
	ok, resp, _, err := c.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if !ok {
		if len(resp.Errors) > 0 {
			return fmt.Errorf("transaction rolled back: op %d: %s", resp.Errors[0].OpIndex, resp.Errors[0].What)
		}
		return fmt.Errorf("transaction rolled back")
	}
	return nil
}
