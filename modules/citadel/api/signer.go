package api

import (
	"context"
	"time"
)

// SignRequest is a certificate citadel has decided to issue: it has
// authenticated the caller, checked the CSR's signature and chosen the
// identities. The signer must put URIs and DNSNames in the certificate, not
// whatever the CSR asks for.
type SignRequest struct {
	// CSR is the workload's PKCS#10 request, DER.
	CSR []byte
	// URIs are the SPIFFE IDs for the subject alternative name.
	URIs     []string
	DNSNames []string
	// TTL is the requested lifetime; a signer may issue shorter.
	TTL time.Duration
}

// Signer issues workload certificates with a CA whose key is not in meshd:
// an HSM, Vault, a corporate CA, usually out of process as a signer plugin.
type Signer interface {
	// Sign returns the certificate chain, DER: the leaf first, then the
	// intermediates, then the root. citadel checks the chain (the leaf's key
	// is the CSR's, its identities are the request's, each certificate is
	// signed by the next) before handing it out.
	Sign(ctx context.Context, req SignRequest) ([][]byte, error)
}

// SignerRegistry lets a module hand citadel an external signer. The
// citadel module implements it; the plugin host's citadel-plugins
// calls it from Provision with the signer plugin declared in meshd.yaml.
type SignerRegistry interface {
	SetSigner(name string, s Signer) error
}
