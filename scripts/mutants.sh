#!/usr/bin/env bash
# Mutation sweep over the security-policy modules of mcp-oauth-core (not run in CI: it takes a
# while). For each module it runs cargo-mutants with a 60 s timeout per mutant and prints the
# score (caught / viable), where viable = caught + missed + timed out.
#
#   scripts/mutants.sh                  # every module, core tests plus the cross-crate tests
#   scripts/mutants.sh fetch_policy     # one or more modules by name
#   MUTANTS_LIB_ONLY=1 scripts/mutants.sh fetch_policy   # core's unit tests only (much faster)
#   MUTANTS_JOBS=2 scripts/mutants.sh   # parallel builds (each job is a full build directory)
#
# Needs `cargo install cargo-mutants --locked`. Results go to target/mutants/<module>/mutants.out;
# missed.txt there lists the survivors to kill with a test.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
    exit 1
fi

modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    modules=(redirect origin delegate fetch_policy mask outbound)
fi

test_args=(--test-package mcp-oauth-core --test-package mcp-oauth-tests)
extra=()
if [ "${MUTANTS_LIB_ONLY:-0}" = 1 ]; then
    test_args=()
    extra=(-- --lib)
fi

summary=()
for module in "${modules[@]}"; do
    file="core/src/${module}.rs"
    if [ ! -f "$file" ]; then
        echo "no such module: $file" >&2
        exit 1
    fi
    out="target/mutants/${module}"
    mkdir -p "$out"
    echo "== ${module}: cargo mutants over ${file}" >&2
    # cargo-mutants exits non-zero when a mutant survives; keep going and report the score.
    cargo mutants -p mcp-oauth-core --file "$file" --timeout 60 -j "${MUTANTS_JOBS:-1}" \
        -o "$out" "${test_args[@]}" "${extra[@]}" || true
    results="${out}/mutants.out"
    count() { if [ -f "${results}/$1.txt" ]; then grep -c . "${results}/$1.txt" || true; else echo 0; fi; }
    caught=$(count caught)
    missed=$(count missed)
    timeout=$(count timeout)
    unviable=$(count unviable)
    viable=$((caught + missed + timeout))
    summary+=("${module}: ${caught}/${viable} caught (missed ${missed}, timed out ${timeout}, unviable ${unviable})")
done

echo
echo "Mutation scores (caught / viable):"
for line in "${summary[@]}"; do
    echo "  ${line}"
done
