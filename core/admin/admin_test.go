package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestClient(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]int{"n": 7})
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		if r.Header.Get("Content-Type") != "application/json" {
			WriteError(w, http.StatusBadRequest, errors.New("want JSON"))
			return
		}
		_ = jsonDecode(r, &in)
		WriteJSON(w, http.StatusOK, in)
	})
	mux.HandleFunc("GET /refused", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusConflict, errors.New("rotation already running"))
	})
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second, "citadel")
	ctx := context.Background()

	var got map[string]int
	if err := c.Do(ctx, http.MethodGet, "/ok", nil, &got); err != nil || got["n"] != 7 {
		t.Fatalf("GET /ok: %v %v", got, err)
	}
	var raw []byte
	if err := c.Do(ctx, http.MethodGet, "/ok", nil, &raw); err != nil || !strings.Contains(string(raw), `"n": 7`) {
		t.Fatalf("raw body: %q %v", raw, err)
	}
	var echo map[string]string
	if err := c.Do(ctx, http.MethodPost, "/echo", map[string]string{"a": "b"}, &echo); err != nil || echo["a"] != "b" {
		t.Fatalf("POST /echo: %v %v", echo, err)
	}
	for path, want := range map[string]string{
		"/refused": "rotation already running", // the server's own message, as is
		"/plain":   "500 Internal Server Error: broken",
		"/nothing": "not found (is the citadel module enabled in this meshd?)",
	} {
		if err := c.Do(ctx, http.MethodGet, path, nil, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("GET %s: %v, want %q", path, err, want)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	err = NewClient(addr, time.Second, "galley").WithHint("for a stopped one use --data-dir").Do(ctx, http.MethodGet, "/x", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no meshd admin API at http://"+addr) || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("refused: %v", err)
	}
}

func jsonDecode(r *http.Request, v any) error {
	return json.NewDecoder(r.Body).Decode(v)
}
