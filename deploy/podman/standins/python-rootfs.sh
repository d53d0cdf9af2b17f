#!/usr/bin/env bash
# The stand-in for python:3.11-slim-bookworm, as a root file system: Debian's python3.11 with venv, made by
# debootstrap, trimmed like a slim image, with this machine's CA bundle (a package index behind a TLS-inspecting
# proxy is then trusted, by pip and by apt over https) and a pip configuration pointing pip at it.
#
#   python-rootfs.sh ROOTFS SUITE MIRROR      # as root; setup.sh imports ROOTFS as an image
#
# Exit 3 when debootstrap fails (no mirror reachable: setup.sh then skips); its log is ROOTFS.log.
set -euo pipefail
rootfs="$1" suite="$2" mirror="$3"
rm -rf "$rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 "$suite" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || exit 3
# What a slim image leaves out: package lists and downloads, documentation.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
# As Debian's official images do: apt keeps no package downloads or caches in a layer.
printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' 'Acquire::Languages "none";' \
    >"$rootfs/etc/apt/apt.conf.d/docker-clean"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
