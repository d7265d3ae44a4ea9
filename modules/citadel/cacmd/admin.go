package cacmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/meshd/meshd/modules/citadel"
)

// adminClient implements citadel.Operations over a running meshd's admin
// API (the routes in modules/citadel/admin.go).
type adminClient struct {
	base string
	hc   *http.Client
}

var _ citadel.Operations = (*adminClient)(nil)

func newAdminClient(addr string) *adminClient {
	return &adminClient{base: "http://" + addr, hc: &http.Client{Timeout: 30 * time.Second}}
}

func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no meshd admin API at %s (is meshd running? for a stopped one use --data-dir): %w", c.base, err)
		}
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ae citadel.AdminError
		if json.Unmarshal(raw, &ae) == nil && ae.Error != "" {
			return errors.New(ae.Error)
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s %s: not found (is citadel enabled in this meshd?)", method, path)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if b, ok := out.(*[]byte); ok {
		*b = raw
		return nil
	}
	return json.Unmarshal(raw, out)
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
