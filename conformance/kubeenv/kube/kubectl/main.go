// Command kubectl is upstream kubectl at the harness's Kubernetes version, so that tests can run what
// users type (`weft install | kubectl apply -f -`); the machine's own kubectl, if any, is not used.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
