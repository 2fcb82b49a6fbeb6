// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain),
// built by tests/k8s/build-tools.sh for the loopback test control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
