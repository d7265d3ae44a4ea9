// Command backends runs the quickstart's two greeter backends, v1 and v2,
// on 127.0.0.1 (the addresses mesh/greeter.yaml registers). Each answers
// with its version, so the client can show where its calls went.
//
//	go run ./examples/quickstart/backends
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/examples/quickstart/greeter"
)

type backend struct{ version string }

func (b backend) SayHello(_ context.Context, name *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String(b.version), nil
}

func main() {
	v1 := flag.String("v1", "127.0.0.1:50051", "address of greeter v1")
	v2 := flag.String("v2", "127.0.0.1:50052", "address of greeter v2")
	flag.Parse()

	var servers []*grpc.Server
	errc := make(chan error, 2)
	for _, b := range []struct{ version, addr string }{{"v1", *v1}, {"v2", *v2}} {
		lis, err := net.Listen("tcp", b.addr)
		if err != nil {
			log.Fatalf("greeter %s: %v", b.version, err)
		}
		s := grpc.NewServer()
		greeter.Register(s, backend{b.version})
		servers = append(servers, s)
		go func() { errc <- s.Serve(lis) }()
		fmt.Printf("greeter %s listening on %s\n", b.version, lis.Addr())
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	select {
	case <-sigs:
	case err := <-errc:
		log.Print(err)
	}
	for _, s := range servers {
		s.Stop()
	}
}
