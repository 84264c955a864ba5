#!/usr/bin/env bash
# Installs the Debian 12 packages Keel needs, only those that are missing.
# Safe to run again: with everything present it does nothing.
set -euo pipefail

PACKAGES=(
  g++ cmake make pkg-config
  capnproto libcapnp-dev          # Cap'n Proto 0.9.2: RPC and records (kj-tls: mutual TLS)
  libssl-dev openssl              # OpenSSL: certificate checks (common/tls.cc); openssl makes demo certificates
  liblmdb-dev                     # LMDB: WAL and branch log
  lmdb-utils                      # mdb_stat, mdb_dump: looking into backups (docs/operations.md, "Backup")
  libgtest-dev libgmock-dev       # GoogleTest
  libbenchmark-dev                # Google Benchmark
  libspdlog-dev libfmt-dev        # logging
  libtomlplusplus-dev             # config files
  libcli11-dev                    # command-line flags
  libasio-dev                     # standalone Asio: chaos fault proxy
  postgresql-15 libpq-dev         # PostgreSQL 15 server and libpq: tests/pg
  etcd-server etcd-client         # etcd 3.4 and etcdctl: tests/cluster (tools/etcd_cluster.h)
  libgrpc++-dev libprotobuf-dev   # gRPC C++ 1.51 and protobuf: the etcd client (common/etcd)
  protobuf-compiler               # protoc: stubs from schemas/etcd.proto at build time
  protobuf-compiler-grpc          # grpc_cpp_plugin for protoc
  chromium                        # headless browser for the console test (tests/browser, label browser)
  dpkg-dev                        # dpkg-shlibdeps: the .deb packages' Depends (packaging/, ctest -L packaging)
)
# Node.js and npm drive chromium in that test (puppeteer-core, from npm).
# Debian's packages unless a node and an npm are there already (another
# Node.js install bundles its own npm, which Debian's npm would conflict with).
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

# `install-deps.sh fuzz` (make fuzz): clang and its libFuzzer, ASan and
# UBSan runtimes too, which only the fuzz targets need.
if [ "${1:-}" = fuzz ]; then
  PACKAGES+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "keel: installing missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "keel: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Debian's etcd-server starts a system etcd on 127.0.0.1:2379 where services
# may start (systemd, or sysvinit without a policy-rc.d that forbids it; in
# a container without either nothing starts). Keel's tests never use 2379:
# tools/etcd_cluster.h runs its own members on ports it picks. Still, stop
# and disable the one the install just started, so that nothing of Keel's
# can talk to it by mistake.
if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/etcd ]; then
    $SUDO /etc/init.d/etcd stop >/dev/null 2>&1 || true
    $SUDO update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
fi
