# Sourced by scripts that start a process and wait for the line it prints when ready
# (tests/c/run.sh, examples/c/footprint.sh, bindings/go/bench/footprint.sh).
#
# wait_for_line FILE SED_SCRIPT TRIES [PID]
#   Runs `sed -n SED_SCRIPT FILE` up to TRIES times, 0.1 s apart, until it prints something,
#   and prints that (nothing when the tries ran out). With PID, returns 2 as soon as that
#   process is gone before the line came.
wait_for_line() {
    local file=$1 script=$2 tries=$3 pid=${4:-} value= _
    for _ in $(seq 1 "$tries"); do
        value=$(sed -n "$script" "$file")
        [ -n "$value" ] && break
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        sleep 0.1
    done
    printf '%s' "$value"
}

# The address of `sfc registry --listen` from its stdout in FILE (see wait_for_line).
registry_address() {
    wait_for_line "$1" 's/^sfc registry listening on \([^ ]*\) .*/\1/p' 200 "${2:-}"
}
