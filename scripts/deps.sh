#!/usr/bin/env bash
# Install the Debian 12 packages splitserve needs to build, test and benchmark.
# Runs as root (or with sudo); installs only what is missing; `apt-get update` once first.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libuv1-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
  libdnnl-dev libopenblas-openmp-dev libopenblas0-pthread libjansson-dev libyaml-dev libhttp-parser-dev zlib1g-dev libssl-dev openssl
  protobuf-compiler python3-grpcio python3-protobuf python3-numpy
  valgrind prometheus nginx-light yamllint python3-kubernetes python3-yaml clang-format
)
if [ "${SS_DEPS_TORCH:-1}" = 1 ]; then PKGS+=(python3-torch); fi
# The benches compare against OpenBLAS sgemm (bench/sgemm_peak.c) and run the peer on it.
if [ "${SS_DEPS_BENCH:-0}" = 1 ]; then PKGS+=(python3-matplotlib linux-perf); fi
# make fuzz: clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP (libomp).
if [ "${SS_DEPS_FUZZ:-0}" = 1 ]; then PKGS+=(clang libclang-rt-dev libomp-dev); fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
