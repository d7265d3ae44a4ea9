package cacmd

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/meshd/meshd/core/admin"

	"github.com/meshd/meshd/modules/citadel"
)

// adminClient implements citadel.Operations over a running meshd's admin
// API (the routes in modules/citadel/admin.go).
type adminClient struct {
	c *admin.Client
}

var _ citadel.Operations = (*adminClient)(nil)

func newAdminClient(addr string) *adminClient {
	return &adminClient{c: admin.NewClient(addr, 30*time.Second, "citadel").WithHint("for a stopped one use --data-dir")}
}

func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	return c.c.Do(ctx, method, path, in, out)
}

func (c *adminClient) Status(ctx context.Context) (*citadel.Status, error) {
	var s citadel.Status
	err := c.do(ctx, "GET", "/ca/status", nil, &s)
	return &s, err
}

func (c *adminClient) Rotate(ctx context.Context, force bool) (*citadel.Status, error) {
	var s citadel.Status
	err := c.do(ctx, "POST", "/ca/rotate?force="+strconv.FormatBool(force), nil, &s)
	return &s, err
}

func (c *adminClient) Roots(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, "GET", "/ca/roots", nil, &b)
	return b, err
}

func (c *adminClient) CreateToken(ctx context.Context, req citadel.TokenRequest) (*citadel.NewToken, error) {
	var t citadel.NewToken
	err := c.do(ctx, "POST", "/ca/tokens", req, &t)
	return &t, err
}

func (c *adminClient) ListTokens(ctx context.Context, all bool) ([]citadel.TokenInfo, error) {
	var out []citadel.TokenInfo
	err := c.do(ctx, "GET", "/ca/tokens?all="+strconv.FormatBool(all), nil, &out)
	return out, err
}

func (c *adminClient) RevokeToken(ctx context.Context, id string) error {
	var out struct{}
	return c.do(ctx, "DELETE", "/ca/tokens/"+url.PathEscape(id), nil, &out)
}

func (c *adminClient) ListCerts(ctx context.Context, f citadel.CertFilter) ([]citadel.CertInfo, error) {
	q := url.Values{}
	if f.Identity != "" {
		q.Set("identity", f.Identity)
	}
	q.Set("all", strconv.FormatBool(f.All))
	q.Set("limit", strconv.Itoa(f.Limit))
	var out []citadel.CertInfo
	err := c.do(ctx, "GET", "/ca/certs?"+q.Encode(), nil, &out)
	return out, err
}
