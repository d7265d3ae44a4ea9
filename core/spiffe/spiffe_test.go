package spiffe

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		id         string
		td, ns, sa string
		wantErr    bool
	}{
		{id: "spiffe://cluster.local/ns/shop/sa/reviews", td: "cluster.local", ns: "shop", sa: "reviews"},
		{id: "spiffe://example.org/ns/a-b/sa/c_d.e", td: "example.org", ns: "a-b", sa: "c_d.e"},
		{id: "cluster.local/ns/shop/sa/reviews", wantErr: true},
		{id: "spiffe://cluster.local/ns/shop", wantErr: true},
		{id: "spiffe://cluster.local/ns/shop/sa/reviews/extra", wantErr: true},
		{id: "spiffe://Cluster.Local/ns/shop/sa/reviews", wantErr: true}, // trust domains are lowercase
		{id: "spiffe:///ns/shop/sa/reviews", wantErr: true},
		{id: "spiffe://td/ns/../sa/x", wantErr: true},
		{id: "spiffe://td/ns//sa/x", wantErr: true},
		{id: "spiffe://td/ns/a b/sa/x", wantErr: true},
		{id: "spiffe://td/namespace/a/sa/x", wantErr: true},
		// Empty DNS labels: x509 refuses such URI hosts (found by FuzzParseCSR).
		{id: "spiffe://.td/ns/a/sa/x", wantErr: true},
		{id: "spiffe://td./ns/a/sa/x", wantErr: true},
		{id: "spiffe://a..b/ns/a/sa/x", wantErr: true},
	}
	for _, tt := range tests {
		td, ns, sa, err := Parse(tt.id)
		if (err != nil) != tt.wantErr {
			t.Errorf("Parse(%q) error = %v, want error %t", tt.id, err, tt.wantErr)
			continue
		}
		if err == nil && (td != tt.td || ns != tt.ns || sa != tt.sa) {
			t.Errorf("Parse(%q) = %s %s %s", tt.id, td, ns, sa)
		}
		if err == nil && ID(td, ns, sa) != tt.id {
			t.Errorf("ID round trip of %q = %q", tt.id, ID(td, ns, sa))
		}
	}
}
