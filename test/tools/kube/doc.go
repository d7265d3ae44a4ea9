// Package kube pins the kube-apiserver that the Kubernetes tests run; see
// go.mod and ../build.sh.
package kube
