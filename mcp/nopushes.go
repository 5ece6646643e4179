package mcp

// nopushes.go: the registries the server runs have no istiod to push to;
// what they publish reaches the server through their collections
// (consul.Controller.AmbientInputs).

import (
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/util/sets"
)

// NoPushes is the model.XDSUpdater of a registry outside istiod.
type NoPushes struct{}

var _ model.XDSUpdater = NoPushes{}

func (NoPushes) EDSUpdate(model.ShardKey, string, string, []*model.IstioEndpoint)      {}
func (NoPushes) EDSCacheUpdate(model.ShardKey, string, string, []*model.IstioEndpoint) {}
func (NoPushes) SvcUpdate(model.ShardKey, string, string, model.Event)                 {}
func (NoPushes) ConfigUpdate(*model.PushRequest)                                       {}
func (NoPushes) ProxyUpdate(cluster.ID, string)                                        {}
func (NoPushes) RemoveShard(model.ShardKey)                                            {}

// PruneShard is XDSUpdater's from Istio 1.31 on; older releases do not call it.
func (NoPushes) PruneShard(model.ShardKey, map[string]sets.String) {}
