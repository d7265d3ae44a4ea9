package citadel

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/meshd/meshd/core/admin"
)

// Admin API routes, served on the admin address (loopback by default).
// Anyone who can reach them can mint join tokens, so keep the admin address
// on loopback or behind an authenticating proxy.
const (
	adminStatus  = "GET /ca/status"
	adminRotate  = "POST /ca/rotate"
	adminRoots   = "GET /ca/roots"
	adminTokens  = "GET /ca/tokens"
	adminCreate  = "POST /ca/tokens"
	adminRevoke  = "DELETE /ca/tokens/{id}"
	adminCerts   = "GET /ca/certs"
	maxAdminBody = 1 << 16
)

// AdminError is the JSON body of a failed admin call.
type AdminError = admin.Error

// routes registers the admin API of ops under handle.
func (m *Module) routes(handle func(string, http.Handler)) {
	registerAdmin(handle, m.Operations())
}

func registerAdmin(handle func(string, http.Handler), ops Operations) {
	h := func(f func(*http.Request) (any, error)) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r)
			if err != nil {
				code := http.StatusBadRequest
				switch {
				case errors.Is(err, ErrTokenNotFound):
					code = http.StatusNotFound
				case errors.Is(err, ErrPluggedRotation):
					code = http.StatusConflict
				}
				admin.WriteError(w, code, err)
				return
			}
			if pem, ok := v.([]byte); ok {
				w.Header().Set("Content-Type", "application/x-pem-file")
				w.Write(pem)
				return
			}
			admin.WriteJSON(w, http.StatusOK, v)
		})
	}
	handle(adminStatus, h(func(r *http.Request) (any, error) { return ops.Status(r.Context()) }))
	handle(adminRotate, h(func(r *http.Request) (any, error) {
		return ops.Rotate(r.Context(), r.URL.Query().Get("force") == "true")
	}))
	handle(adminRoots, h(func(r *http.Request) (any, error) { return ops.Roots(r.Context()) }))
	handle(adminTokens, h(func(r *http.Request) (any, error) {
		return ops.ListTokens(r.Context(), r.URL.Query().Get("all") == "true")
	}))
	handle(adminCreate, h(func(r *http.Request) (any, error) {
		var req TokenRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return nil, err
		}
		return ops.CreateToken(r.Context(), req)
	}))
	handle(adminRevoke, h(func(r *http.Request) (any, error) {
		return struct{}{}, ops.RevokeToken(r.Context(), r.PathValue("id"))
	}))
	handle(adminCerts, h(func(r *http.Request) (any, error) {
		q := r.URL.Query()
		f := CertFilter{Identity: q.Get("identity"), All: q.Get("all") == "true"}
		if l := q.Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil {
				return nil, err
			}
			f.Limit = n
		}
		return ops.ListCerts(r.Context(), f)
	}))
}
