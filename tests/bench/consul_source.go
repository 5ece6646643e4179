package bench

import (
	"context"
	"fmt"
	"sync"

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

// Load registers every node, instance and passing check, 128 operations per
// transaction on 4 workers (one instance is two operations).
func (c *ConsulSource) Load(ctx context.Context) error {
	d := c.Data
	var ops api.TxnOps
	for j := 0; j < d.M; j++ {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet,
			Node: api.Node{Node: d.Node(Instance{Idx: j}), Address: "127.0.0.1"}}})
	}
	if err := c.txn(ctx, ops); err != nil {
		return fmt.Errorf("register nodes: %w", err)
	}
	batches := make(chan api.TxnOps)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				if err := c.txn(ctx, b); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
	ops = nil
	flush := func() bool {
		select {
		case batches <- ops:
			ops = nil
			return true
		case err = <-errs:
			return false
		}
	}
	for i := 0; i < d.N && err == nil; i++ {
		for j := 0; j < d.M; j++ {
			in := Instance{i, j}
			ops = append(ops,
				&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: d.Node(in), Service: api.AgentService{
					ID: d.ID(in), Service: d.Name(i), Address: d.IP(in), Port: Port,
					Tags: []string{"version=" + d.Version(in)}, Meta: map[string]string{"protocol": "http"},
				}}},
				&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(in, api.HealthPassing)}})
			if len(ops)+2 > txnOps && !flush() {
				break
			}
		}
	}
	if err == nil && len(ops) > 0 {
		flush()
	}
	close(batches)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	if err != nil {
		return fmt.Errorf("load %d×%d instances into Consul: %w", d.N, d.M, err)
	}
	return nil
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
