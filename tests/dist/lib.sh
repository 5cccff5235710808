# Shared by the tests/dist scripts (sourced, with `repo` set to the checkout): a scratch
# directory outside the checkout, processes stopped by PID, an environment with nothing from the
# build tree, and one line per check with the closing `N passed, N failed`.

# Nothing from the checkout's build tree on any search path or in any variable (the Makefile
# exports SFC_TEST_OUT=<checkout>/target/...).
strip_target() { tr ':' '\n' <<<"${1:-}" | grep -v -e "^$repo/target" -e '^$' | paste -sd: -; }
scrub_build_tree() {
	PATH=$(strip_target "$PATH")
	export PATH
	local v
	for v in $(env | grep -F "$repo/target" | cut -d= -f1); do unset "$v"; done
}

# make_scratch NAME: sets `scratch` to a new directory under $TMPDIR, removed on exit
# (KEEP_SCRATCH=1 keeps it); processes whose PIDs are in `pids` are stopped first.
pids=()
make_scratch() {
	scratch=$(mktemp -d "${TMPDIR:-/tmp}/sfc-dist-$1.XXXXXX")
	log="$scratch/check.log"
	trap cleanup EXIT
}
cleanup() {
	local pid
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
	if [ "${KEEP_SCRATCH:-}" = 1 ]; then echo "scratch directory kept: $scratch"; else rm -rf "$scratch"; fi
}

pass=0
fail=0
# check NAME CMD...: runs CMD (its output goes to a log shown on failure), one line per check.
check() {
	local name=$1
	shift
	if "$@" >"$log" 2>&1; then
		pass=$((pass + 1))
		echo "ok: $name"
	else
		fail=$((fail + 1))
		echo "FAILED: $name"
		sed 's/^/    /' "$log" | tail -40
	fi
}
finish() {
	echo "$pass passed, $fail failed"
	[ "$fail" -eq 0 ]
	exit
}
