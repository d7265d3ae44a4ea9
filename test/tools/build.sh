#!/usr/bin/env bash
# Builds (or reuses) the real servers the Kubernetes and Consul tests run:
# kube-apiserver, etcd and consul, each from the Go module proxy through the
# tools modules next to this script. Binaries are cached outside the checkout,
# keyed by name and version:
#
#   ${MESHD_TOOLS_CACHE:-$HOME/.cache/meshd-tools}/<name>-<version>/<name>
#
# A cached binary is reused as is, so only the first run pays for the build
# (about 10 minutes for kube-apiserver and 6 for consul on 2 cores).
#
# Usage: test/tools/build.sh [kube-apiserver|etcd|consul|all]...   (default all)
#        test/tools/build.sh --env     print export lines for the tests
#
# It prints one "name=path" line per binary on stdout; build output goes to
# stderr. Builds run under nice so they do not starve the machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${MESHD_TOOLS_CACHE:-$HOME/.cache/meshd-tools}"

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
CONSUL_VERSION=v1.20.6

export GOWORK=off
export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
# consul-awsauth's pseudo-version is not in the checksum database; skip the
# database for that module only. Everything else is still verified.
export GONOSUMDB=github.com/hashicorp/consul-awsauth
export CGO_ENABLED=0

nice_cmd=()
if command -v nice >/dev/null; then nice_cmd=(nice -n 19); fi

# build NAME VERSION MODULE_DIR PACKAGE [go build flags...]
build() {
	local name=$1 version=$2 dir=$3 pkg=$4
	shift 4
	local out="$cache/$name-$version"
	local bin="$out/$name"
	if [[ -x "$bin" ]]; then
		echo "$name=$bin"
		return
	fi
	mkdir -p "$out"
	# One build per binary at a time, even across checkouts.
	exec 9>"$out/.lock"
	flock 9
	if [[ ! -x "$bin" ]]; then
		local start=$SECONDS
		echo "building $name $version (cached in $out)" >&2
		(cd "$dir" && "${nice_cmd[@]}" go build "$@" -o "$bin.tmp" "$pkg") >&2
		mv "$bin.tmp" "$bin"
		echo "built $name $version in $((SECONDS - start))s" >&2
	fi
	exec 9>&-
	echo "$name=$bin"
}

kube_apiserver() {
	build kube-apiserver "$KUBE_VERSION" "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
}
etcd() { build etcd "$ETCD_VERSION" "$here/kube/etcd" . -ldflags "-s -w"; }
consul() { build consul "$CONSUL_VERSION" "$here/consul" github.com/hashicorp/consul -ldflags "-s -w"; }

if [[ "${1:-}" == "--env" ]]; then
	"$0" all | sed -e 's/^kube-apiserver=/export MESHD_KUBE_APISERVER=/' \
		-e 's/^etcd=/export MESHD_ETCD=/' -e 's/^consul=/export MESHD_CONSUL=/'
	exit
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=(all); fi
for t in "${targets[@]}"; do
	case "$t" in
	kube-apiserver) kube_apiserver ;;
	etcd) etcd ;;
	consul) consul ;;
	all) etcd; consul; kube_apiserver ;;
	*) echo "unknown tool $t (want kube-apiserver, etcd, consul or all)" >&2; exit 2 ;;
	esac
done
