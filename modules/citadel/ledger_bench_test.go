package citadel

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/meshd/meshd/core/store"
)

func BenchmarkLedger(b *testing.B) {
	st, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ns := st.Module("citadel")
	ns.Migrate(migrations)
	l := newLedger(ns)
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		var s [16]byte
		for pb.Next() {
			rand.Read(s[:])
			if err := l.record(nil, certRecord{Serial: hex.EncodeToString(s[:]), Identity: "spiffe://example.org/ns/default/sa/x", Issued: time.Now(), NotAfter: time.Now(), Caller: "127.0.0.1:5555", Authenticator: "client-cert: serial 0123456789abcdef0123456789abcdef", Root: "0123456789abcdef"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
