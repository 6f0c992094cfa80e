// Command kube-apiserver is the upstream kube-apiserver, built from the Go module proxy so that the
// tests in conformance/kubeenv run against a real API server. See ../../kubeenv.go for how it is started.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
