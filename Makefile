# dropstock: `make run` to try it, `make test` to check it. Every target installs what it is missing and
# is quiet when there is nothing to do. Run as root (CI does); PostgreSQL itself runs as `postgres`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PG_BIN      := /usr/lib/postgresql/15/bin
PG_CONFIG   := $(PG_BIN)/pg_config
PGRX        := 0.18.0
ROOT        := $(CURDIR)
PG_DIR      ?= $(ROOT)/target/pg
PG_DATA     := $(PG_DIR)/data
PG_LOG      := $(PG_DIR)/postgresql.log
DB_PORT     ?= 5544
HTTP_LISTEN ?= 127.0.0.1:8080
ADAPTER     := $(ROOT)/target/debug/dropstock-http
DATABASE_URL ?= postgresql://postgres@127.0.0.1:$(DB_PORT)/postgres
AS_PG       := sudo -u postgres
PSQL        := $(PG_BIN)/psql "$(DATABASE_URL)" -v ON_ERROR_STOP=1 -X -q
APT_PACKAGES := postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config chromium fonts-liberation jq pgbouncer
export DATABASE_URL

.PHONY: help setup pg-access db db-stop install adapter run test check pg-test integration-test isolation-test \
        browser-test test-repeat test-db test-db-remove bench bench-sql bench-outside clean-db

# Targets share clusters and the installed extension, so they run one after another even under -j.
.NOTPARALLEL:

help:
	@echo "make run        start a local PostgreSQL with dropstock, sample data and the HTTP adapter"
	@echo "make test       formatting, lints, in-database tests, then integration, isolation and browser tests"
	@echo "                in a throwaway cluster ($(TEST_PG_DIR), port $(TEST_DB_PORT)), removed afterwards"
	@echo "make test-repeat N=30   the concurrency tests and isolation specs N times, stopping at the first failure"
	@echo "make test-db    a test cluster left running, for cargo test by hand; make test-db-remove throws it away"
	@echo "make bench      the whole performance table: SQL, adapter at 1,000 and 5,000 clients, 10,000 and"
	@echo "                20,000 watchers, 1 to 4 adapters, fsync"
	@echo "make bench-sql  pgbench: dropstock vs the replaced system's pattern vs the commit ceiling"
	@echo "make bench-outside  the adapter row again with wrk (apt-get install wrk) beside the ceiling"
	@echo "                (all in a cluster of their own: $(BENCH_PG_DIR), port $(BENCH_DB_PORT))"
	@echo "make db / db-stop   start / stop the local cluster ($(DATABASE_URL))"

# ---- setup: Debian packages, cargo-pgrx at the pinned version, pgrx pointed at PostgreSQL 15 -------------
setup: target/.setup-$(PGRX)

target/.setup-$(PGRX):
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "setup: installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q '$(PGRX)'; then \
	  echo "setup: installing cargo-pgrx $(PGRX) (takes several minutes)"; \
	  cargo install cargo-pgrx --version $(PGRX) --locked --quiet; fi
	@grep -qs '^pg15' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml || cargo pgrx init --pg15 $(PG_CONFIG) >/dev/null
	@mkdir -p target && touch $@

# PostgreSQL runs as `postgres`, which must be able to reach target/ (a clone under a private home
# directory is not reachable): grant it passage (x, not r) through the parent directories if needed.
pg-access:
	@mkdir -p target
	@if ! $(AS_PG) test -x $(ROOT)/target; then \
	  echo "setup: letting the postgres user pass through the directories above $(ROOT)/target"; \
	  d=$(ROOT)/target; while [ "$$d" != / ]; do chmod o+x "$$d"; d=$$(dirname "$$d"); done; fi

# ---- the local cluster -------------------------------------------------------------------------------------
# Overwriting the .so in place would crash every running cluster that has it mapped. `cargo pgrx install
# --sudo` and `cargo pgrx test --runas` both copy with `sudo cp`, which does exactly that, so they run with
# a `sudo` of ours first on PATH that turns that copy into unlink-then-create, at the moment of copying:
# running backends keep the old file, new ones load the new one, no cluster has to stop for an install,
# and the library is never missing while a build runs. The stamp makes `make db` skip the build and the
# install when nothing changed.
EXTENSION_SOURCES := extension/Cargo.toml extension/dropstock.control $(wildcard extension/src/*.rs extension/src/*/*.rs sql/*.sql)
PG_PKGLIBDIR := $(shell $(PG_CONFIG) --pkglibdir 2>/dev/null)
PG_EXTDIR    := $(shell $(PG_CONFIG) --sharedir 2>/dev/null)/extension
SUDO_SHIM    := $(ROOT)/target/sudo-shim
WITH_SHIM    := PATH=$(SUDO_SHIM):$$PATH

$(SUDO_SHIM)/sudo: Makefile
	@mkdir -p $(@D)
	@printf '%s\n' '#!/bin/sh' \
	  '# `sudo cp SRC DEST` from cargo-pgrx: replace DEST by a new file instead of rewriting it in place.' \
	  'if [ "$$1" = cp ] && [ $$# = 3 ]; then exec /usr/bin/sudo cp --remove-destination "$$2" "$$3"; fi' \
	  'exec /usr/bin/sudo "$$@"' > $@
	@chmod +x $@

# A copy of what was installed, so that pg-test (which installs a build with its test functions in) can
# put the same files back without a rebuild, and clusters that loaded them need no restart.
INSTALLED_COPY := $(ROOT)/target/installed
SAVE_INSTALLED := rm -rf $(INSTALLED_COPY) && mkdir -p $(INSTALLED_COPY) && \
  cp $(PG_PKGLIBDIR)/dropstock.so $(PG_EXTDIR)/dropstock.control $(PG_EXTDIR)/dropstock--*.sql $(INSTALLED_COPY)/
RESTORE_INSTALLED := cp --remove-destination $(INSTALLED_COPY)/dropstock.so $(PG_PKGLIBDIR)/ && \
  cp --remove-destination $(INSTALLED_COPY)/dropstock.control $(INSTALLED_COPY)/dropstock--*.sql $(PG_EXTDIR)/

# A release build: reserve_item's fast path is Rust that reads and writes rows itself, and unoptimised it
# made 0.85x the calls per second (tests/bench/sql/reserve.sql, 64 clients, builds run in turn).
install: target/.installed

target/.installed: $(EXTENSION_SOURCES) | setup $(SUDO_SHIM)/sudo
	@echo "install: building and installing the extension"
	@cd extension && $(WITH_SHIM) cargo pgrx install --release --sudo --pg-config $(PG_CONFIG) > $(ROOT)/target/install.log 2>&1 \
	  || { cat $(ROOT)/target/install.log; exit 1; }
	@$(SAVE_INSTALLED)
	@touch $@

db: install pg-access
	@if [ ! -s $(PG_DATA)/PG_VERSION ]; then \
	  echo "db: creating a cluster in $(PG_DATA)"; \
	  mkdir -p $(PG_DIR) && chown postgres: $(PG_DIR); \
	  $(AS_PG) $(PG_BIN)/initdb -D $(PG_DATA) -U postgres --auth=trust -E UTF8 >/dev/null; \
	  cp sql/dev/postgresql.conf $(PG_DATA)/dropstock.conf && chown postgres: $(PG_DATA)/dropstock.conf; \
	  echo "include 'dropstock.conf'" >> $(PG_DATA)/postgresql.conf; \
	  echo "port = $(DB_PORT)" >> $(PG_DATA)/postgresql.conf; \
	  echo "unix_socket_directories = '$(PG_DIR)'" >> $(PG_DATA)/postgresql.conf; \
	fi
	@# A cluster that was running when a new build was installed still runs the old worker: restart it.
	@if [ $(PG_DIR)/.extension-loaded -ot target/.installed ] && $(AS_PG) $(PG_BIN)/pg_ctl -D $(PG_DATA) status >/dev/null; then \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D $(PG_DATA) -m fast -w restart -l $(PG_LOG) >/dev/null; fi
	@$(AS_PG) $(PG_BIN)/pg_ctl -D $(PG_DATA) status >/dev/null || \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D $(PG_DATA) -l $(PG_LOG) -w -t 60 start >/dev/null
	@# The version stays 0.x until the schema is frozen, so a rebuilt extension is recreated, not updated.
	@# DROP EXTENSION takes its tables one by one while the worker's sweep may hold one and want another:
	@# when the deadlock detector cancels the DROP (it does, rather than the sweep), it is made again.
	@if [ $(PG_DIR)/.extension-loaded -ot target/.installed ] && $(PSQL) -tAc "SELECT 1 FROM pg_extension WHERE extname = 'dropstock'" | grep -q 1; then \
	  echo "db: the extension changed; recreating it (drops and holds in this cluster are reset)"; \
	  for attempt in 1 2 3 4 5; do $(PSQL) -c "DROP EXTENSION dropstock CASCADE" 2>/dev/null && break; \
	    [ $$attempt = 5 ] && { $(PSQL) -c "DROP EXTENSION dropstock CASCADE"; exit 1; }; done; fi
	@$(PSQL) -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS dropstock"
	@touch $(PG_DIR)/.extension-loaded
	@echo "db: dropstock is running at $(DATABASE_URL)"

db-stop:
	@if [ -s $(PG_DATA)/postmaster.pid ]; then \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D $(PG_DATA) -m fast -w stop >/dev/null && echo "db: stopped"; fi

clean-db: db-stop
	rm -rf $(PG_DIR)

# ---- the two commands ----------------------------------------------------------------------------------------
adapter:
	@cargo build -p dropstock-http --quiet

# The adapter runs in the foreground (Ctrl-C stops it; the database keeps running until `make db-stop`).
# A local admin token is made once and kept in target/admin-token.
run: db adapter
	@$(PSQL) -o /dev/null -f sql/dev/sample.sql
	@[ -s target/admin-token ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > target/admin-token
	@echo "run: database  $(DATABASE_URL)  (psql: $(PG_BIN)/psql $(DATABASE_URL))"
	@echo "run: open      http://$(HTTP_LISTEN)/"
	@echo "run: admin token for creating drops: $$(cat target/admin-token)"
	@echo "run: the replaced Node/Express client: build it with its API base http://$(HTTP_LISTEN) (REST at /api,"
	@echo "run:   Socket.IO at /socket.io/), register its fixed buyer id once with"
	@echo "run:   curl -X POST http://$(HTTP_LISTEN)/api/users -H 'Content-Type: application/json' -H \"Authorization: Bearer $$(cat target/admin-token)\" -d '{\"username\":\"demo\",\"id\":\"<its buyer id>\"}'"
	@echo "run:   and for its Create Drop page (no token) and its dev server's origin start with"
	@echo "run:   DROPSTOCK_OPEN_DROP_CREATION=true DROPSTOCK_CORS_ORIGINS=http://localhost:3000 make run"
	@DROPSTOCK_ADMIN_TOKEN=$$(cat target/admin-token) DROPSTOCK_LISTEN=$(HTTP_LISTEN) exec $(ADAPTER)

# ---- tests: in a throwaway cluster of their own -------------------------------------------------------------
# The tests leave drops behind and the fault tests kill the server they run against, so none of them runs
# in the cluster `make run` uses: they get a new cluster (same settings, own port) that is removed when they
# pass. When they fail it is stopped and kept for its postgresql.log; the next run removes it first.
TEST_PG_DIR   := $(ROOT)/target/test-pg
TEST_DB_PORT  := 5545
BENCH_PG_DIR  := $(ROOT)/target/bench-pg
BENCH_DB_PORT := 5546
# $(call cluster-vars,DIR,PORT): the variables that point this Makefile's targets at another cluster.
cluster-vars = PG_DIR=$(1) DB_PORT=$(2) DATABASE_URL=postgresql://postgres@127.0.0.1:$(2)/postgres
IN_TEST_CLUSTER  := $(MAKE) --no-print-directory $(call cluster-vars,$(TEST_PG_DIR),$(TEST_DB_PORT))
IN_BENCH_CLUSTER := $(MAKE) --no-print-directory $(call cluster-vars,$(BENCH_PG_DIR),$(BENCH_DB_PORT))
TEST_CLUSTER_STOP := if [ -s $(TEST_PG_DIR)/data/postmaster.pid ]; then \
  $(AS_PG) $(PG_BIN)/pg_ctl -D $(TEST_PG_DIR)/data -m immediate -w stop >/dev/null || true; fi

# Several people may run tests in one working tree; the test cluster, its port and pgrx's scratch cluster
# are one each, so a second run waits for the first instead of removing its cluster under it. The lock is
# held by the recipe's shell alone (9>&- keeps it out of servers its children start).
TAKE_TEST_LOCK = exec 9>$(ROOT)/target/.test.lock; \
  flock -n 9 || { echo "$@: waiting for another test run in this working tree"; flock 9; }

# $(call in-test-cluster,TARGETS): makes TARGETS against a new test cluster, then removes it (or, when they
# failed or were interrupted, stops it and keeps it).
define in-test-cluster
$(TAKE_TEST_LOCK); \
$(MAKE) --no-print-directory test-db-remove 9>&-; \
trap '$(TEST_CLUSTER_STOP); [ ! -d $(TEST_PG_DIR) ] || \
  echo "test: failed; the test cluster is stopped and kept in $(TEST_PG_DIR) (see its postgresql.log)"' EXIT; \
trap 'exit 130' INT TERM; \
$(IN_TEST_CLUSTER) db $(1) 9>&-; \
trap - EXIT; $(MAKE) --no-print-directory test-db-remove 9>&-
endef

test: setup check pg-test
	@start=$$(date +%s); $(call in-test-cluster,integration-test isolation-test browser-test); \
	  echo "test: passed in $$(( $$(date +%s) - start )) s of cluster tests"

check: setup
	@cargo fmt --all --check
	@cargo clippy --workspace --all-targets --quiet -- -D warnings

# In-database tests, in a scratch cluster of cargo-pgrx's own. cargo-pgrx installs a build with the test
# functions into the system PostgreSQL (through the sudo shim, so running clusters survive it); what
# `make install` had installed is put back afterwards, passed or not.
pg-test: setup pg-access $(SUDO_SHIM)/sudo
	@mkdir -p target/pgrx-test && chown postgres: target/pgrx-test
	@$(TAKE_TEST_LOCK); \
	trap 'if [ -e $(ROOT)/target/.installed ] && [ -s $(INSTALLED_COPY)/dropstock.so ]; then $(RESTORE_INSTALLED); \
	         else rm -f $(ROOT)/target/.installed; fi' EXIT; \
	  cd extension && $(WITH_SHIM) cargo pgrx test pg15 --runas postgres --pgdata $(ROOT)/target/pgrx-test/data 9>&-

# A test cluster left running, to run single tests by hand (the tests' default DATABASE_URL points at it).
test-db:
	@$(IN_TEST_CLUSTER) db
	@echo "test-db: DROPSTOCK_PGDATA=$(TEST_PG_DIR)/data DROPSTOCK_HTTP_BIN=$(ADAPTER) DROPSTOCK_PG_BIN=$(PG_BIN) cargo test -p dropstock-tests"

test-db-remove:
	@$(TEST_CLUSTER_STOP)
	@rm -rf $(TEST_PG_DIR)

# Isolation specs (tests/isolation/specs/NAME.spec, expected output in tests/isolation/expected/NAME.out):
# sessions, steps and permutations run by PostgreSQL's isolationtester, which prints each step's result
# and which step waited on which. A new spec is picked up by its file alone. Specs run in the existing
# test database, so each one creates the buyers and drops it needs in `setup` (fixed ids, so the output
# is the same every run) and deletes them in `teardown`. Results land in target/isolation/.
ISOLATION_REGRESS := $(PG_PKGLIBDIR)/pgxs/src/test/isolation/pg_isolation_regress
ISOLATION_SPECS   := $(sort $(basename $(notdir $(wildcard tests/isolation/specs/*.spec))))
RUN_ISOLATION = rm -rf target/isolation && mkdir -p target/isolation && \
  { $(ISOLATION_REGRESS) --use-existing --host=127.0.0.1 --port=$(DB_PORT) --user=postgres --dbname=postgres \
      --bindir=$(PG_BIN) --inputdir=tests/isolation --outputdir=target/isolation $(ISOLATION_SPECS) \
      > target/isolation/summary.txt 2>&1 \
    || { cat target/isolation/summary.txt; cat target/isolation/regression.diffs 2>/dev/null; false; }; }

# The concurrency storms are the `concurrency`, `races` and `waitlist` modules of the `sql` test target
# (tests/tests/sql).
CONCURRENCY_TESTS = cargo test -p dropstock-tests --test sql

# The drop page's test drives headless Chromium (Debian's, from setup) with playwright-core from a
# project-local node_modules; screenshots land in target/browser/.
BROWSER_DEPS := tests/browser/node_modules/.installed

$(BROWSER_DEPS): tests/browser/package.json tests/browser/package-lock.json
	@echo "setup: installing the browser test's npm packages into tests/browser/node_modules"
	@npm ci --prefix tests/browser --no-audit --no-fund --silent
	@touch $@

ifeq ($(PG_DIR),$(TEST_PG_DIR))
# The test targets by layer (tests/tests/{sql,http,faults}): real connections against the test cluster,
# the adapter run inside the test process from its library, or as the binary (DROPSTOCK_HTTP_BIN) by the
# tests that signal it, restart it or read its log (the fault tests and SIGTERM). The fault tests stop and start this
# cluster (pg_ctl -m immediate, DROPSTOCK_PGDATA, server binaries from DROPSTOCK_PG_BIN), which is why
# everything runs one test at a time. Reliability figures land in target/reliability.txt.
integration-test: db adapter
	@cargo test -p dropstock-http --quiet
	@DROPSTOCK_HTTP_BIN=$(ADAPTER) DROPSTOCK_PGDATA=$(PG_DATA) DROPSTOCK_PG_BIN=$(PG_BIN) \
	  cargo test -p dropstock-tests --quiet -- --test-threads=1
	@echo "integration-test: the REST suite again, each adapter behind a PgBouncer of its own (transaction pooling)"
	@DROPSTOCK_TEST_POOLER=pgbouncer DROPSTOCK_HTTP_BIN=$(ADAPTER) \
	  cargo test -p dropstock-tests --quiet --test http -- rest:: scale_out:: --test-threads=1

isolation-test: db
	@$(RUN_ISOLATION)
	@grep -E '^(ok|not ok|test) ' target/isolation/summary.txt || cat target/isolation/summary.txt

# The test binary is built once and then run directly, so nothing is rebuilt between runs even while
# sources change.
N ?= 30
test-repeat: db
	@binary=$$($(CONCURRENCY_TESTS) --no-run --quiet --message-format=json \
	  | jq -r 'select(.executable != null and .target.name == "sql") | .executable'); \
	passed=0; \
	for k in $$(seq 1 $(N)); do \
	  start=$$(date +%s); \
	  if ! (cd tests && DROPSTOCK_PGDATA=$(PG_DATA) $$binary concurrency:: races:: waitlist:: --test-threads=1 -q) > target/test-repeat.log 2>&1; then \
	    cat target/test-repeat.log; echo "test-repeat: run $$k/$(N) failed in the concurrency, race or waiting-list tests"; \
	    echo "test-repeat: $$passed of $(N) runs passed"; exit 1; fi; \
	  if ! ( $(RUN_ISOLATION) ); then \
	    echo "test-repeat: run $$k/$(N) failed in the isolation specs"; \
	    echo "test-repeat: $$passed of $(N) runs passed"; exit 1; fi; \
	  passed=$$k; echo "test-repeat: run $$k/$(N) passed ($$(( $$(date +%s) - start )) s)"; \
	done; \
	echo "test-repeat: $$passed of $(N) runs passed"

# The replaced backend's client against the adapter: its REST calls and live updates with the real
# socket.io-client in Node, then a page using socket.io-client in Chromium.
browser-test: db adapter $(BROWSER_DEPS)
	@DROPSTOCK_HTTP_BIN=$(ADAPTER) node tests/browser/drop-page.test.mjs
	@DROPSTOCK_HTTP_BIN=$(ADAPTER) node tests/browser/socketio-client.test.mjs
	@DROPSTOCK_HTTP_BIN=$(ADAPTER) node tests/browser/socketio-page.test.mjs
else
# Run on their own, these make their own test cluster too.
integration-test isolation-test test-repeat browser-test: setup
	@$(call in-test-cluster,$@)
endif

# ---- benchmarks: in a cluster of their own ---------------------------------------------------------------------
# A bench may drop and recreate the extension (a cold-start row) or restart the server (DROPSTOCK_PGDATA),
# so it runs in target/bench-pg, never in the cluster `make run` uses. That cluster is created when absent
# and kept between runs (its million bench buyers take a while to make).
BENCH_ENV := DATABASE_URL=postgresql://postgres@127.0.0.1:$(BENCH_DB_PORT)/postgres DROPSTOCK_PGDATA=$(BENCH_PG_DIR)/data

bench-sql:
	@$(IN_BENCH_CLUSTER) db
	@$(BENCH_ENV) tests/bench/sql/bench-sql.sh

# The README's performance table in one run (bench-sql's rows included): release builds of the adapter and
# of the load tools in tests/bench; each tool's report is kept in target/bench/.
bench:
	@$(IN_BENCH_CLUSTER) db
	@cargo build --release -p dropstock-http -p dropstock-tests --bins --quiet
	@mkdir -p target/bench && $(BENCH_ENV) tests/bench/bench.sh | tee target/bench/table.md

# The adapter row checked with a load generator that is not ours: wrk (Debian: apt-get install wrk),
# side by side with the one-insert ceiling; README, "Performance".
bench-outside:
	@$(IN_BENCH_CLUSTER) db
	@cargo build --release -p dropstock-http --bins --quiet
	@$(BENCH_ENV) tests/bench/outside/run.sh | tee target/bench/outside.md
