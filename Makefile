# sregistry: the usual entry points. `make demo` and `make test` work on a fresh machine.
CARGO ?= cargo

.PHONY: build test test-python python-lint test-cluster lint bench fuzz demo deps deps-demo clean soak

# Test tools that scripts/install-deps.sh installs, pinned, once per machine under
# ${XDG_CACHE_HOME:-~/.cache}/sregistry-test-tools (s3s-fs, and a Python venv with oras,
# pyjwt, cryptography) come first on PATH for the tests.
TEST_PATH = $(shell bash scripts/install-deps.sh path):$(PATH)

build:
	$(CARGO) build --release

deps:
	@bash scripts/install-deps.sh test

deps-demo:
	@bash scripts/install-deps.sh demo

# The test suite: unit, property and integration tests (real binary, real siftool files,
# real multi-process contention). Uses cargo-nextest when installed.
test: deps
	@PATH="$(TEST_PATH)" SREGISTRY_OLD_CLIENT="$(shell bash scripts/install-deps.sh oldclient)" $(CARGO) nextest run --no-fail-fast
	@bash scripts/test-python.sh

# The Python package (python/): `pip install ./python` into a fresh venv, then pytest
# (python/tests/, against a real registry). Part of `make test`.
test-python: deps
	@bash scripts/test-python.sh

# The cluster tests (tests/cluster/README.md): an NFSv4.2 server and three client nodes,
# qemu guests with Debian's kernel, sharing one cache. Needs root and apt (prepare.sh
# installs qemu, busybox and cpio and fetches the kernel into target/cluster/). The nodes
# run the test build, the one `make test` made (the tests time nothing, and a release
# build would cost CI minutes); CLUSTER_BUILD=release makes the release build and hands
# them that (the figures in docs/shared-cache.md). CLUSTER_TESTS=name... runs only those.
CLUSTER_BUILD ?= test
test-cluster:
	bash tests/cluster/prepare.sh >/dev/null
ifeq ($(CLUSTER_BUILD),release)
	$(CARGO) build --release
	SREGISTRY_CLUSTER_BIN="$$(bash scripts/release-dir.sh)/sregistry" $(CARGO) test --test cluster -- $(CLUSTER_TESTS)
else
	$(CARGO) test --test cluster -- $(CLUSTER_TESTS)
endif

# The crash loop at length: kill add and gc at random moments 5,000 times.
soak: deps
	PATH="$(TEST_PATH)" SREGISTRY_CRASH_ITERATIONS=5000 $(CARGO) test --test it crash_loop -- --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --test cluster -- -D warnings
	$(CARGO) clippy --lib --bins -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings
	$(CARGO) clippy --example embed --no-default-features -- -D warnings
	@$(MAKE) --no-print-directory python-lint

# The extension crate is its own workspace; RUSTFLAGS replaces the repository's static
# linking flags, which cannot make a shared library (python/build_backend/sregistry_build.py).
python-lint:
	cd python && $(CARGO) fmt --check
	cd python && RUSTFLAGS= $(CARGO) clippy --all-targets -- -D warnings

# Benchmarks: the local commands against the Python client and cp (docs/benchmarks.md),
# gc/verify/get under load (docs/benchmarks-gc-verify.md), pull/push against curl and
# PyPI oras (docs/benchmarks-remote.md), docker:// pull and conversion against the
# Apptainer pipeline (docs/benchmarks-docker.md), and the converter alone against umoci +
# mksquashfs (bench/convert.sh, printed), `migrate` of 10,000 images against sequential
# adds and the old client (docs/benchmarks-migrate.md), and the Python package
# (docs/benchmarks-python.md). BENCH_QUICK=1 for a quick smoke run.
bench: deps
	bash bench/run.sh
	bash bench/gc_verify.sh
	bash bench/remote.sh
	bash bench/docker.sh
	bash bench/convert.sh
	bash bench/migrate.sh
	bash bench/python.sh

# Fuzz targets live in fuzz/ (a cargo-fuzz workspace, nightly toolchain).
fuzz:
	@if [ -f fuzz/Cargo.toml ]; then bash fuzz/run.sh; else echo "no fuzz targets yet (see docs/development.md)"; fi

demo: deps-demo build
	bash scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf demo-cache
