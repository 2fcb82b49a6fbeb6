//go:build tools

// Package tools only pins the commands built by tests/k8s/build-tools.sh:
// the loopback control plane (kube-apiserver, kubectl) and, for the
// one-node cluster that runs the chart's pods (tests/pods.rs), the
// controller manager, the scheduler and the kubelet.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
