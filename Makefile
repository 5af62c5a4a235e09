# Hiber's entry points. `make setup` needs root (it installs Debian packages);
# everything else runs as the user that owns /dev/kvm.

CARGO ?= cargo
HIBER := target/release/hiber
IMAGES := guest-images/out/vmlinux guest-images/out/initramfs.cpio
export HIBER_BIN := $(CURDIR)/$(HIBER)

.PHONY: setup guest-images build test demo bench fuzz lint clean

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

# Runs each virtio fuzz target for FUZZ_SECONDS (cargo-fuzz, nightly Rust;
# both are installed on first use). Crashes land in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := virtio_rng virtio_block virtio_net virtio_vsock
fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	$(MAKE) -C guest-images clean
