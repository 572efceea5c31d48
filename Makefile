# The two quick-start commands (see README.md), plus their parts.
.PHONY: demo test setup lint unit windows

demo: setup
	bash scripts/demo

test: setup lint unit windows

setup:
	bash scripts/setup

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	cargo test --workspace --locked --no-fail-fast

# The Windows build from Linux: clippy, a test build and the tests Wine can run; then the
# installer and portable zip (target/windows-dist/), installed and uninstalled under Wine.
windows:
	bash scripts/windows/check
	bash scripts/windows/package
	bash scripts/windows/installer-test
