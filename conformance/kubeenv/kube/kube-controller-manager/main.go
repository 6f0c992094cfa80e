// Command kube-controller-manager is the upstream controller manager (Deployments, ReplicaSets,
// EndpointSlices, ServiceAccount tokens, namespace deletion, ...), built from the Go module proxy for
// the cluster mode of conformance/kubeenv.
package main

import (
	"os"
	_ "time/tzdata" // CronJob time zones, as upstream's main

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
