package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The end-to-end test's applications run as children (the test binary
// re-executed): grpc-go reads GRPC_XDS_BOOTSTRAP once, at init, so each
// application that uses an agent's bootstrap must be its own process, as it
// would be on a VM.
const (
	envChild = "AGENT_E2E_CHILD" // server or client
	envCerts = "AGENT_E2E_CERTS" // server: the agent's certificate directory
	envAddr  = "AGENT_E2E_ADDR"  // server: listen address
	envXDS   = "AGENT_E2E_XDS"   // server: "1" for xds.NewGRPCServer
	echoCall = "/meshd.test.Echo/Call"
)

func runChild() (int, bool) {
	switch os.Getenv(envChild) {
	case "server":
		return childMain(runServer), true
	case "client":
		return childMain(runClient), true
	}
	return 0, false
}

func childMain(f func() error) int {
	if err := f(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// echoReply is what the echo server answers: who called, as its verified
// client certificate says.
type echoReply struct {
	PeerID     string `json:"peerId"`
	PeerSerial string `json:"peerSerial"`
}

func verifiedPeer(ctx context.Context) (id, serial string) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", ""
	}
	var leaf *x509.Certificate
	switch {
	case len(ti.State.VerifiedChains) > 0:
		leaf = ti.State.VerifiedChains[0][0]
	case len(ti.State.PeerCertificates) > 0 && ti.State.HandshakeComplete:
		// grpc-go's xDS server credentials verify the client's chain
		// against the provider's roots themselves (in
		// VerifyPeerCertificate, failing the handshake otherwise) and leave
		// VerifiedChains empty.
		leaf = ti.State.PeerCertificates[0]
	default:
		return "", ""
	}
	for _, u := range leaf.URIs {
		id = u.String()
	}
	return id, fmt.Sprintf("%x", leaf.SerialNumber)
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "meshd.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{MethodName: "Call", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var in wrapperspb.StringValue
		if err := dec(&in); err != nil {
			return nil, err
		}
		id, serial := verifiedPeer(ctx)
		b, _ := json.Marshal(echoReply{PeerID: id, PeerSerial: serial})
		return wrapperspb.String(string(b)), nil
	}}},
}

// fileCreds is mTLS from the agent's certificate files, re-read at each
// handshake. Like gRPC's file_watcher, it keeps the last good pair when a
// read races the agent's switch to a new set.
type fileCreds struct {
	dir  string
	mu   sync.Mutex
	last *tls.Config
}

func (f *fileCreds) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cert, err := tls.LoadX509KeyPair(filepath.Join(f.dir, FileCertChain), filepath.Join(f.dir, FileKey))
	roots, rerr := os.ReadFile(filepath.Join(f.dir, FileRootCert))
	pool := x509.NewCertPool()
	if err != nil || rerr != nil || !pool.AppendCertsFromPEM(roots) {
		if f.last != nil {
			return f.last, nil
		}
		return nil, fmt.Errorf("certificate files: %v %v", err, rerr)
	}
	f.last = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	return f.last, nil
}

// runServer is the workload on the first VM: an echo server with the gRPC
// health service, over mTLS from its agent's files, or, with envXDS, an
// xDS-enabled server configured by meshd (gRFC A36) through its agent's
// bootstrap. It prints one JSON line per serving-mode change and stops
// when stdin closes.
func runServer() error {
	var srv interface {
		grpc.ServiceRegistrar
		Serve(net.Listener) error
		Stop()
	}
	out := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	if os.Getenv(envXDS) == "1" {
		creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return err
		}
		s, err := xds.NewGRPCServer(grpc.Creds(creds), xds.ServingModeCallback(func(addr net.Addr, args xds.ServingModeChangeArgs) {
			msg := map[string]string{"mode": args.Mode.String()}
			if args.Err != nil {
				msg["error"] = args.Err.Error()
			}
			mu.Lock()
			out.Encode(msg)
			mu.Unlock()
		}))
		if err != nil {
			return err
		}
		srv = s
	} else {
		fc := &fileCreds{dir: os.Getenv(envCerts)}
		srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{GetConfigForClient: fc.config})))
		mu.Lock()
		out.Encode(map[string]string{"mode": connectivity.ServingModeServing.String()})
		mu.Unlock()
	}
	srv.RegisterService(&echoDesc, struct{}{})
	healthgrpc.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", os.Getenv(envAddr))
	if err != nil {
		return err
	}
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString(0) // until stdin closes
		srv.Stop()
	}()
	return srv.Serve(lis)
}

// loadCmd asks the client child for RPCs.
type loadCmd struct {
	Target string `json:"target"`
	// N RPCs on the long-lived channel, or, with Duration, as many as
	// Concurrency workers make in that time, while one more worker dials a
	// fresh channel every FreshEvery (new handshakes with current files).
	N           int           `json:"n"`
	Duration    time.Duration `json:"duration"`
	Concurrency int           `json:"concurrency"`
	FreshEvery  time.Duration `json:"freshEvery"`
	Timeout     time.Duration `json:"timeout"`
	// WaitForReady makes RPCs wait for a ready backend (warming up).
	WaitForReady bool `json:"waitForReady"`
}

// loadResult is what the client child saw.
type loadResult struct {
	OK            int            `json:"ok"`
	Failed        int            `json:"failed"`
	Errors        []string       `json:"errors,omitempty"`
	ServerIDs     map[string]int `json:"serverIds"`     // server certificate URI, as the client verified it
	ServerSerials map[string]int `json:"serverSerials"` // server certificate serials
	PeerIDs       map[string]int `json:"peerIds"`       // client identity, as the server verified it
	PeerSerials   map[string]int `json:"peerSerials"`   // client certificate serials the server saw
}

// runClient is the application on the second VM: a proxyless gRPC client
// dialing xds:/// targets with xDS credentials (its TLS comes from meshd's
// config and its certificates from the agent's file_watcher provider).
// One JSON command per stdin line, one result per stdout line.
func runClient() error {
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	dial := func(target string) (*grpc.ClientConn, error) {
		return grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	}
	conns := map[string]*grpc.ClientConn{}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var cmd loadCmd
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			return err
		}
		if cmd.Timeout == 0 {
			cmd.Timeout = 5 * time.Second
		}
		conn := conns[cmd.Target]
		if conn == nil {
			if conn, err = dial(cmd.Target); err != nil {
				return err
			}
			conns[cmd.Target] = conn
		}
		res := &loadResult{ServerIDs: map[string]int{}, ServerSerials: map[string]int{}, PeerIDs: map[string]int{}, PeerSerials: map[string]int{}}
		var mu sync.Mutex
		call := func(c *grpc.ClientConn) {
			ctx, cancel := context.WithTimeout(context.Background(), cmd.Timeout)
			defer cancel()
			var p peer.Peer
			var reply wrapperspb.StringValue
			err := c.Invoke(ctx, echoCall, wrapperspb.String("hi"), &reply, grpc.Peer(&p), grpc.WaitForReady(cmd.WaitForReady))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				if len(res.Errors) < 5 {
					res.Errors = append(res.Errors, err.Error())
				}
				return
			}
			res.OK++
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				leaf := ti.State.PeerCertificates[0]
				for _, u := range leaf.URIs {
					res.ServerIDs[u.String()]++
				}
				res.ServerSerials[fmt.Sprintf("%x", leaf.SerialNumber)]++
			} else {
				res.ServerIDs[fmt.Sprintf("no TLS (%T)", p.AuthInfo)]++
			}
			var er echoReply
			if json.Unmarshal([]byte(reply.GetValue()), &er) == nil {
				res.PeerIDs[er.PeerID]++
				res.PeerSerials[er.PeerSerial]++
			}
		}
		if cmd.Duration == 0 {
			for range cmd.N {
				call(conn)
				if cmd.WaitForReady && res.Failed > 0 {
					break // not coming: do not wait out every deadline
				}
			}
		} else {
			deadline := time.Now().Add(cmd.Duration)
			var wg sync.WaitGroup
			var stop atomic.Bool
			for range max(1, cmd.Concurrency) {
				wg.Go(func() {
					for !stop.Load() {
						call(conn)
					}
				})
			}
			if cmd.FreshEvery > 0 {
				wg.Go(func() {
					for !stop.Load() {
						c, err := dial(cmd.Target)
						if err == nil {
							for range 3 {
								call(c)
							}
							c.Close()
						}
						time.Sleep(cmd.FreshEvery)
					}
				})
			}
			time.Sleep(time.Until(deadline))
			stop.Store(true)
			wg.Wait()
		}
		if err := out.Encode(res); err != nil {
			return err
		}
	}
	return nil
}
