package sdk

import (
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/pluginsigner"
)

// ServeSigner serves s as a signer plugin: the CA that signs citadel's
// workload certificates. It does not return.
//
// Sign gets a CSR citadel has authenticated and the identities to certify,
// and returns the chain, leaf first, root last. meshd checks the chain
// (pluginsigner.CheckChain) before a workload gets it.
func ServeSigner(info Info, s api.Signer, opts ...Option) {
	serve(plugin.KindSigner, info, func(srv *grpc.Server) error { return pluginsigner.Register(srv, s) }, opts)
}
