//go:build tools

// Package tools only pins the command built by tests/k8s/build-tools.sh.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
