package integration

import "github.com/pilot-consul/pilot-consul/tests/e2e"

// local is the shared mesh as an e2e environment (set up in TestMain).
var local *e2e.Local
