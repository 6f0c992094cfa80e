package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/identity"
)

// workloadCert issues a workload certificate for id from ca, as Certify would.
func workloadCert(ca *identity.CA, id identity.ID) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Sign(key.Public(), id)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: append([][]byte{leaf.Certificate.Raw}, leaf.Intermediates...), PrivateKey: key, Leaf: leaf.Certificate}, nil
}

// handshakeRates measures new mutual-TLS 1.3 connections per second between two workloads with
// certificates of ca (each side verifying the other's SPIFFE ID against the bundle), with full
// handshakes and with session resumption. It is the bound a proxy's connection rate is measured against.
func handshakeRates(ca *identity.CA, d time.Duration) (full, resumed float64, err error) {
	serverID := identity.ID{TrustDomain: ca.TrustDomain(), Namespace: "default", ServiceAccount: "server"}
	clientID := identity.ID{TrustDomain: ca.TrustDomain(), Namespace: "default", ServiceAccount: "client"}
	serverCert, err := workloadCert(ca, serverID)
	if err != nil {
		return 0, 0, err
	}
	clientCert, err := workloadCert(ca, clientID)
	if err != nil {
		return 0, 0, err
	}
	roots := ca.TrustBundle()
	verify := func(want identity.ID, usage x509.ExtKeyUsage) func([][]byte, [][]*x509.Certificate) error {
		return func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyPeer(raw, roots, usage)
			if err == nil && id != want {
				err = fmt.Errorf("peer is %s, want %s", id, want)
			}
			return err
		}
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{*serverCert},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify(clientID, x509.ExtKeyUsageClientAuth),
	})
	if err != nil {
		return 0, 0, err
	}
	defer lis.Close()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if err := conn.(*tls.Conn).Handshake(); err != nil {
					return
				}
				io.Copy(conn, conn)
			}()
		}
	}()
	rate := func(cache tls.ClientSessionCache) (float64, error) {
		cfg := &tls.Config{
			MinVersion:            tls.VersionTLS13,
			Certificates:          []tls.Certificate{*clientCert},
			InsecureSkipVerify:    true, // verified by SPIFFE ID below
			VerifyPeerCertificate: verify(serverID, x509.ExtKeyUsageServerAuth),
			ClientSessionCache:    cache,
		}
		var n atomic.Int64
		var firstErr atomic.Value
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(d)
		for range 2 * runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				buf := make([]byte, 1)
				for time.Now().Before(deadline) {
					conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", lis.Addr().String(), cfg)
					if err == nil {
						// One byte each way: the connection is usable, and a TLS 1.3 client has the ticket.
						if _, err = conn.Write([]byte{1}); err == nil {
							_, err = io.ReadFull(conn, buf)
						}
						conn.Close()
					}
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if err, _ := firstErr.Load().(error); err != nil {
			return 0, err
		}
		return float64(n.Load()) / time.Since(start).Seconds(), nil
	}
	if full, err = rate(nil); err != nil {
		return 0, 0, fmt.Errorf("full handshakes: %w", err)
	}
	if resumed, err = rate(tls.NewLRUClientSessionCache(64)); err != nil {
		return 0, 0, fmt.Errorf("resumed handshakes: %w", err)
	}
	return full, resumed, nil
}
