package consul

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Issue #35, target 7: `consul snapshot restore` on a real Consul server
// takes every index back to the snapshot's. Consul answers the blocking
// queries in flight at once, from the state store it abandons (the index
// they waited on, no news), and a query sent on an index from after the
// snapshot waits its whole wait: a restore once took over a minute to show.
// istiod must serve the restored catalog within 10 s, with either
// detector, and follow later changes at once.
func TestSnapshotRestoreOnARealServer(t *testing.T) {
	for _, watch := range []string{watchServices, watchCatalog} {
		t.Run(watch, func(t *testing.T) {
			c, err := harness.StartConsul(t, func(c *harness.ConsulConfig) { c.Server = true })
			require.NoError(t, err)
			// On a node of the catalog's own: the agent's anti-entropy would
			// put its own registrations back after the restore.
			put := func(id, name, addr string) {
				t.Helper()
				_, err := c.Client.Catalog().Register(&api.CatalogRegistration{Node: "ext", Address: "127.0.9.1",
					Service: &api.AgentService{ID: id, Service: name, Address: addr, Port: 80}}, nil)
				require.NoError(t, err)
			}
			drop := func(id string) {
				t.Helper()
				_, err := c.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: "ext", ServiceID: id}, nil)
				require.NoError(t, err)
			}
			put("a-1", "a", "127.0.9.11")
			put("b-1", "b", "127.0.9.21")
			f := startRegistry(t, c, func(a *Args) { a.Watch = watch })
			f.waitSynced()
			f.eventuallyEndpoints("a", "127.0.9.11:80")
			f.eventuallyEndpoints("b", "127.0.9.21:80")

			snap, _, err := c.Client.Snapshot().Save(nil)
			require.NoError(t, err)
			saved, err := io.ReadAll(snap)
			snap.Close()
			require.NoError(t, err)

			// After the snapshot: a second instance of a, a new service c,
			// b gone, and enough writes that every index is far above the
			// snapshot's.
			put("a-2", "a", "127.0.9.12")
			put("c-1", "c", "127.0.9.31")
			drop("b-1")
			for i := range 30 {
				put("a-2", "a", fmt.Sprintf("127.0.9.%d", 12+i%2))
			}
			put("a-2", "a", "127.0.9.12")
			f.eventuallyEndpoints("a", "127.0.9.11:80", "127.0.9.12:80")
			f.eventuallyEndpoints("c", "127.0.9.31:80")
			f.eventuallyEndpoints("b")

			require.NoError(t, c.Client.Snapshot().Restore(nil, bytes.NewReader(saved)))
			restored := time.Now()
			require.Eventually(t, func() bool {
				return assert.ObjectsAreEqual([]string{"127.0.9.11:80"}, f.endpoints("a")) &&
					assert.ObjectsAreEqual([]string{"127.0.9.21:80"}, f.endpoints("b")) &&
					f.reg.GetService("c.service.consul") == nil
			}, 10*time.Second, 10*time.Millisecond, "the restored catalog is served within 10 s: a %v, b %v",
				f.endpoints("a"), f.endpoints("b"))
			t.Logf("%s: the restored catalog served %v after the restore", watch, time.Since(restored).Round(time.Millisecond))

			changed := time.Now()
			put("a-3", "a", "127.0.9.13")
			f.eventuallyEndpoints("a", "127.0.9.11:80", "127.0.9.13:80")
			t.Logf("%s: a change after the restore served in %v", watch, time.Since(changed).Round(time.Millisecond))
		})
	}
}
