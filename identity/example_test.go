package identity_test

import (
	"context"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/reflection"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/workload"
)

// How weft-control serves Certify on --identity-addr with the CA of --identity-dir and, in local mode,
// the tokens of --identity-tokens (in a cluster: kubeauth.TokenReviewer and kubeauth.NewEventRecorder).
func ExampleNewServer() {
	ctx := context.Background()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		log.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, "/etc/weft/identity"); err != nil {
		log.Fatal(err) // names the missing file and `weft identity bootstrap`
	}
	go identity.WatchDir(ctx, ca, "/etc/weft/identity", time.Minute, nil) // issuer rotation without restart

	tokens, err := identity.LoadStaticTokens("/etc/weft/tokens")
	if err != nil {
		log.Fatal(err)
	}
	self := identity.ID{TrustDomain: identity.DefaultTrustDomain, Namespace: "weft-system", ServiceAccount: "weft-control"}
	tlsConfig := ca.ServerTLSConfig(self, "weft-control.weft-system.svc", "localhost", "127.0.0.1")
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConfig)))
	identity.NewServer(ca, tokens).Register(g)
	reflection.Register(g)
	lis, err := net.Listen("tcp", ":15012")
	if err != nil {
		log.Fatal(err)
	}
	go g.Serve(lis)
}

// How weft-proxy gets and renews its certificate.
func ExampleNewServer_proxy() {
	ctx := context.Background()
	client, err := workload.New(workload.Config{
		Addr:            "weft-control.weft-system.svc:15012",
		Identity:        identity.ID{TrustDomain: identity.DefaultTrustDomain, Namespace: "default", ServiceAccount: "web"},
		TokenFile:       "/var/run/secrets/weft/token",
		TrustBundleFile: "/var/run/secrets/weft/ca.crt",
	})
	if err != nil {
		log.Fatal(err)
	}
	go client.Run(ctx)
	<-client.Ready() // /ready only with a certificate
	cert, _ := client.Certificate()
	_ = cert
}
