// Package admin holds what the admin HTTP API (127.0.0.1:15014 by default)
// shares between the modules that serve routes on it and the CLI commands
// that call it: the error body every handler answers with, a JSON writer,
// and a client with messages an operator can act on.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Error is the JSON body of every non-2xx admin response.
type Error struct {
	Error string `json:"error"`
}

// WriteJSON writes v as indented JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = PrintJSON(w, v)
}

// PrintJSON writes v as indented JSON and a newline: the `-o json` of every
// meshd command, shaped like the admin API's answers.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteError writes err as an Error body with status code.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, Error{Error: err.Error()})
}

// maxResponse bounds what the client reads from a response: config
// revisions and dumps can be large, but never this large.
const maxResponse = 256 << 20

// Client calls a running meshd's admin API.
type Client struct {
	base   string
	module string
	hint   string
	hc     *http.Client
}

// NewClient returns a client for the admin server at addr (host:port or a
// URL). module names the module whose routes the caller uses, so a 404 can
// say which module is not enabled.
func NewClient(addr string, timeout time.Duration, module string) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: strings.TrimSuffix(base, "/"), module: module, hc: &http.Client{Timeout: timeout}}
}

// WithHint adds advice to the "meshd is not running" error, such as how to
// work on a stopped meshd's store instead.
func (c *Client) WithHint(hint string) *Client {
	c.hint = hint
	return c
}

// Base returns the admin server's base URL.
func (c *Client) Base() string { return c.base }

// Do sends in (JSON, when not nil) to path and decodes the answer into out
// (JSON; a *[]byte receives the raw body; nil discards it). Errors say what
// to do: meshd not running, module not enabled, or the server's own message.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
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
			hint := "is meshd running? see --admin"
			if c.hint != "" {
				hint += "; " + c.hint
			}
			return fmt.Errorf("no meshd admin API at %s (%s): %w", c.base, hint, err)
		}
		return fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var ae Error
		if json.Unmarshal(raw, &ae) == nil && ae.Error != "" {
			return errors.New(ae.Error)
		}
		if resp.StatusCode == http.StatusNotFound && c.module != "" {
			return fmt.Errorf("%s %s: not found (is the %s module enabled in this meshd?)", method, path, c.module)
		}
		msg := strings.TrimSpace(string(raw))
		if len(msg) > 512 {
			msg = msg[:512] + "..."
		}
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = raw
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}
