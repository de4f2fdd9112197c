# husk: `make demo` runs the main job, `make test` the whole suite. Both install what they
# need on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
.DEFAULT_GOAL := demo

GUEST   := build/guest
MUSL    := x86_64-unknown-linux-musl
AGENT   := target/$(MUSL)/guest/husk-agent
PROBE   := target/$(MUSL)/release/husk-guest-probe
HOSTILE := target/$(MUSL)/release/husk-hostile-guest
HOSTILE_AGENT := target/$(MUSL)/release/husk-hostile-agent
CARGO   ?= cargo
# make install: PREFIX for the binaries and guest image, SYSCONFDIR for husk.toml,
# DESTDIR a staging root for packages.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR    ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DIST    := build/dist/husk-$(VERSION)-x86_64

.PHONY: deps kernel hostile-kernel agent initramfs image hostile-image vmm bins lint unit integration test demo demo-pod report bench bench-devices bench-agent bench-shim bench-net bench-pod test-shim test-net test-cri test-template fuzz clean release stage install uninstall dist check test-install test-install-vm

deps:
	scripts/install-deps.sh

kernel: deps
	guest-image/build-kernel.sh $(GUEST)

# The hostile-guest test's kernel: ours plus /dev/mem and no virtio drivers (never
# shipped; see guest-image/kernel/husk-guest-hostile.fragment). After `kernel` it builds
# incrementally in the same tree (~4 min on 2 cores), once per cache key.
hostile-kernel: kernel
	guest-image/build-kernel.sh $(GUEST)/hostile guest-image/kernel/husk-guest-hostile.fragment

agent: deps
	$(CARGO) build --profile guest -p husk-agent --target $(MUSL)
	$(CARGO) build --release -p husk-guest-probe -p husk-pause --target $(MUSL)

initramfs: agent
	$(CARGO) run -q --release -p husk-guest-image -- --agent $(AGENT) --out $(GUEST)/initramfs.cpio
	$(CARGO) run -q --release -p husk-guest-image -- --agent $(PROBE) --out $(GUEST)/probe-initramfs.cpio
	$(CARGO) run -q --release -p husk-guest-image -- --agent $(HOSTILE) --out $(GUEST)/hostile-initramfs.cpio
	$(CARGO) run -q --release -p husk-guest-image -- --agent $(HOSTILE_AGENT) --out $(GUEST)/hostile-agent-initramfs.cpio

image: kernel initramfs

# What tests/tests/hostile_guest.rs boots besides the image.
hostile-image: hostile-kernel initramfs

# The host binaries as shipped: static (musl) husk-vmm, husk-jailer, containerd-shim-husk-v2 and
# husk-check. Tests, demo, benchmarks and `make dist` all run these: one release build.
vmm: deps
	$(CARGO) build --release --target $(MUSL) -p husk-vmm -p husk-jail -p containerd-shim-husk-v2 -p husk-check

# The demo and benchmark programs (crate tests/, release).
bins: deps
	$(CARGO) build --release -p husk-tests --bins

# The scripts too: shellcheck (warnings and errors) over every shell script.
SHELL_SCRIPTS := $(wildcard scripts/*.sh scripts/testhost/*.sh guest-image/*.sh) scripts/testhost/kvm-mode .ci/run
SH_SCRIPTS    := scripts/testhost/init scripts/testhost/stage2

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck -S warning $(SHELL_SCRIPTS)
	shellcheck -S warning --shell=sh $(SH_SCRIPTS)

unit: deps vmm
	HUSK_REQUIRE_VIRTIOFSD=1 $(CARGO) test --workspace

# Loops and transfers are short here (5 shim run/remove cycles, 3 network teardown
# cycles, 16 MiB each way through a pod's network, 1 CRI pod cycle, 3 pods restored from
# one template); the long versions are `make test-shim` (50 cycles), `make test-net` (20
# cycles, 64 MiB), `make test-cri` (20 pod cycles) and `make test-template` (20 pods).
integration: image hostile-image vmm
	HUSK_SHIM_CYCLES=$${HUSK_SHIM_CYCLES:-5} HUSK_NET_CYCLES=$${HUSK_NET_CYCLES:-3} HUSK_NET_TEST_MIB=$${HUSK_NET_TEST_MIB:-16} HUSK_CRI_CYCLES=$${HUSK_CRI_CYCLES:-1} HUSK_TEMPLATE_PODS=$${HUSK_TEMPLATE_PODS:-3} scripts/integration.sh

# Only the containerd shim's end-to-end tests (also part of `make test`, with 5 cycles),
# with 50 run/remove cycles unless HUSK_SHIM_CYCLES says otherwise.
test-shim: image vmm
	HUSK_INTEGRATION_ONLY=shim HUSK_SHIM_CYCLES=$${HUSK_SHIM_CYCLES:-50} HUSK_INTEGRATION_IDLE=$${HUSK_INTEGRATION_IDLE:-600} scripts/integration.sh

# Only the pod-network tests (also part of `make test`, with 3 teardown cycles), under runc
# and husk, with 20 run/remove cycles unless HUSK_NET_CYCLES says otherwise.
test-net: image vmm
	HUSK_INTEGRATION_ONLY=network HUSK_NET_CYCLES=$${HUSK_NET_CYCLES:-20} HUSK_NET_TEST_MIB=$${HUSK_NET_TEST_MIB:-64} scripts/integration.sh

# Only the CRI tests (also part of `make test`, with 1 pod cycle), under runc and husk,
# with 20 pod cycles in the lifecycle test unless HUSK_CRI_CYCLES says otherwise.
test-cri: image vmm
	HUSK_INTEGRATION_ONLY="cri cri_pod" HUSK_CRI_CYCLES=$${HUSK_CRI_CYCLES:-20} scripts/integration.sh

# Only the pod-template tests, with 20 pods restored from one template on one bridge
# unless HUSK_TEMPLATE_PODS says otherwise (3 in `make test`).
test-template: image vmm
	HUSK_INTEGRATION_ONLY=template HUSK_TEMPLATE_PODS=$${HUSK_TEMPLATE_PODS:-20} scripts/integration.sh

test: deps lint unit fuzz test-install integration test-install-vm

# What `make install` and `make dist` ship: static (musl) binaries, the guest image,
# virtiofsd, config and deploy files, staged in $(DIST) with install.sh and SHA256SUMS.
release: vmm

stage: image release
	scripts/dist.sh stage $(DIST)

install: stage
	PREFIX=$(PREFIX) SYSCONFDIR=$(SYSCONFDIR) DESTDIR=$(DESTDIR) $(DIST)/install.sh

uninstall:
	PREFIX=$(PREFIX) SYSCONFDIR=$(SYSCONFDIR) DESTDIR=$(DESTDIR) scripts/install.sh --uninstall

# build/dist/husk-<version>-x86_64.tar.gz
dist: stage
	scripts/dist.sh tar $(DIST)

# Can this host run husk? (PASS/FAIL per check; reads $(SYSCONFDIR)/husk/husk.toml.)
check: release
	target/$(MUSL)/release/husk-check

# Install/uninstall round trip into a throwaway DESTDIR, and the tarball against it (no VM).
test-install: dist
	scripts/test-install.sh $(DIST)

# In the test host (or with HUSK_TEST_SYSTEM_INSTALL=1 where KVM runs directly): a clone
# under /tmp runs the demo; make install's install.sh into the system paths, the system
# containerd with the README's snippet, husk-check, ctr run; uninstall.
test-install-vm: dist
	$(CARGO) build -p husk-tests --bin husk-demo
	HUSK_DEMO_BIN=target/debug/husk-demo scripts/test-install-vm.sh $(DIST)

demo: image vmm bins
	scripts/demo.sh

# A two-container pod under husk through containerd's CRI (RuntimeClass handler husk), its
# page fetched from the node by pod IP (in the test host where needed).
demo-pod: image vmm bins
	scripts/in-kvm.sh --timeout 1800 -- target/release/husk-demo-pod

# The isolation-overhead report (README): every section under runc, crun and husk,
# interleaved, into build/report/ (report.md, samples.csv, a PNG per section), in the test
# host where needed. QUICK=1: small sizes (under 10 min there); SECTIONS=a,b: only those.
REPORT := target/release/husk-report
report: image vmm bins
	scripts/in-kvm.sh --timeout $(if $(filter 1,$(QUICK)),1200,3000) --rw-dir build/report -- \
		$(REPORT) --out $(CURDIR)/build/report --husk-template $(if $(filter 1,$(QUICK)),--quick) $(if $(SECTIONS),--sections $(SECTIONS))

# The benchmarks are sections of the report, each into build/bench-<name>/ and printed.
# Boot: husk-vmm (with and without seccomp) against QEMU's microvm on the same guest.
bench: image vmm bins
	scripts/in-kvm.sh --timeout 3000 --rw-dir build/bench-boot -- $(REPORT) --out $(CURDIR)/build/bench-boot --sections boot --runs $${RUNS:-10}

# `ctr run --rm` of busybox true under runc, crun, husk (booted), husk restored from its
# template and husk unjailed, interleaved, and
# the host memory of 1, 5 and 10 idle pods, through a private containerd.
bench-shim: image vmm bins
	scripts/in-kvm.sh --timeout 3000 --rw-dir build/bench-shim -- $(REPORT) --out $(CURDIR)/build/bench-shim --sections start,density --husk-unjailed --husk-template --runs $${RUNS:-10}

# Pod start (RunPodSandbox + CreateContainer + StartContainer) and teardown through
# containerd's CRI, handlers runc, crun and husk, interleaved.
bench-pod: image vmm bins
	scripts/in-kvm.sh --timeout 3600 --rw-dir build/bench-pod -- $(REPORT) --out $(CURDIR)/build/bench-pod --sections pod --husk-template --runs $${RUNS:-10}

# TCP throughput both ways and 1-byte round-trip latency, a pod per runtime on one CNI
# bridge, interleaved.
bench-net: image vmm bins
	scripts/in-kvm.sh --timeout 5400 --rw-dir build/bench-net -- $(REPORT) --out $(CURDIR)/build/bench-net --sections network --net-mib $${NET_MIB:-256} --net-pings $${NET_PINGS:-10000} --net-rounds $${NET_ROUNDS:-3}

fuzz: deps
	scripts/fuzz.sh $${FUZZ_SECONDS:-20}

# vsock against TCP loopback, virtio-fs against the host.
bench-devices: image vmm bins
	scripts/in-kvm.sh --timeout 3000 --rw-dir build/bench-devices -- $(REPORT) --out $(CURDIR)/build/bench-devices --sections devices --dev-mib $${MIB:-256} --dev-files $${FILES:-10000}

# Host-native container start through the agent against runc (cgroup-v1 feature: this
# host's cgroups are v1; the guest binary is v2 only).
bench-agent: deps
	$(CARGO) build --release -p husk-agent --features cgroup-v1
	$(CARGO) build --release -p husk-tests --bin husk-bench-agent
	HUSK_AGENT=target/release/husk-agent target/release/husk-bench-agent --runs $${RUNS:-20}

clean:
	$(CARGO) clean
	rm -rf build
