# Hiber's entry points. `make setup` needs root (it installs Debian packages);
# everything else runs as the user that owns /dev/kvm.

CARGO ?= cargo
HIBER := target/release/hiber
IMAGES := guest-images/out/vmlinux guest-images/out/initramfs.cpio
export HIBER_BIN := $(CURDIR)/$(HIBER)

.PHONY: setup guest-images build test demo bench lint clean

# Debian packages for the guest images, QEMU for the benchmark comparison.
setup:
	./scripts/setup.sh

guest-images:
	$(MAKE) -C guest-images

build:
	$(CARGO) build --release --workspace --all-targets

# Unit tests, then the tests that boot the guest under KVM (they need
# /dev/kvm and fail loudly without it).
test: guest-images build lint
	$(CARGO) test --release --workspace

demo: guest-images build
	$(CARGO) run --release -p integration-tests --bin hiber-demo

bench: guest-images build
	$(CARGO) run --release -p integration-tests --bin hiber-bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	$(MAKE) -C guest-images clean
