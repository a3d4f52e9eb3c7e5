#!/usr/bin/env bash
# The scripted Alice/Bob scenario, with assertions, on 127.0.0.1 with local processes.
#
#   ./test.sh            build, start a rendezvous and two daemons, play the scenario
#
# Steps: register alice and bob; alice -> bob, bob -> alice, alice -> bob; both histories show the
# three messages in order with the right authors; bob stops, alice sends, bob starts and receives
# it; both sides show the same safety number; the rendezvous's data holds none of the plaintexts.
# Still to come (issue 8): `--compose` against docker compose, a foreign-CA client refused by
# bob's node, and the trace in Jaeger.
set -euo pipefail
cd "$(dirname "$0")"

fail() { echo "test.sh: FAILED: $*" >&2; exit 1; }
step() { echo "test.sh: $*"; }

cargo build --locked --quiet --bin peerchat --bin peerchat-rendezvous
target_dir="${CARGO_TARGET_DIR:-target}"
peerchat="$target_dir/debug/peerchat"
rendezvous="$target_dir/debug/peerchat-rendezvous"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$rendezvous" --data-dir "$work/rendezvous" --listen 127.0.0.1:0 > "$work/rendezvous.out" 2> "$work/rendezvous.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "https://" "$work/rendezvous.out" 2>/dev/null && break; sleep 0.1; done
port="$(sed -n 's/.*https:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/rendezvous.out")"
[ -n "$port" ] || fail "the rendezvous did not start"
url="https://localhost:$port"
step "rendezvous on $url"

start_daemon() { # name
    rm -f "$work/$1/api.addr"
    "$peerchat" daemon --data-dir "$work/$1" --rendezvous "$url" --ca-cert "$work/rendezvous/ca.pem" \
        > "$work/$1.out" 2> "$work/$1.log" &
    pids+=($!)
    eval "pid_$1=$!"
    for _ in $(seq 200); do [ -s "$work/$1/api.addr" ] && return 0; sleep 0.1; done
    fail "$1's daemon did not start (see $work/$1.log)"
}
wait_listening() { # name count
    for _ in $(seq 200); do
        [ "$(grep -c "listening on" "$work/$1.out" 2>/dev/null || true)" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "$1's network did not start"
}
pc() { local who="$1"; shift; PEERCHAT_PASSWORD="correct horse battery" "$peerchat" --data-dir "$work/$who" "$@"; }
authors_and_texts() { # name peer
    pc "$1" history "$2" --json | python3 -c 'import json,sys; [print(m["author"]+": "+m["text"]) for m in json.load(sys.stdin)]'
}

start_daemon alice
start_daemon bob
pc alice register alice > /dev/null || fail "registering alice"
pc bob register bob > /dev/null || fail "registering bob"
wait_listening alice 1
wait_listening bob 1
step "alice and bob registered"

pc alice send bob "Hello Bob, it's Alice" > /dev/null || fail "alice -> bob"
pc bob send alice "Hi Alice! Bob here" > /dev/null || fail "bob -> alice"
pc alice send bob "Lunch at noon?" > /dev/null || fail "alice -> bob (2)"
expected=$'alice: Hello Bob, it\'s Alice\nbob: Hi Alice! Bob here\nalice: Lunch at noon?'
[ "$(authors_and_texts alice bob)" = "$expected" ] || fail "alice's history: $(authors_and_texts alice bob)"
[ "$(authors_and_texts bob alice)" = "$expected" ] || fail "bob's history: $(authors_and_texts bob alice)"
step "three messages, same history on both sides"

kill "$pid_bob"; wait "$pid_bob" 2>/dev/null || true
pc alice send bob "Are you there? (sent while you were away)" > /dev/null || fail "send to offline bob"
start_daemon bob
wait_listening bob 1
for _ in $(seq 100); do
    authors_and_texts bob alice | grep -q "sent while you were away" && break
    sleep 0.2
done
authors_and_texts bob alice | grep -q "sent while you were away" || fail "bob did not receive the offline message"
[ "$(authors_and_texts bob alice | grep -c "sent while you were away")" = 1 ] || fail "the offline message arrived twice"
step "bob was offline and got the message when he came back"

a="$(pc alice safety-number bob)"
b="$(pc bob safety-number alice)"
[ -n "$a" ] && [ "$a" = "$b" ] || fail "safety numbers differ: '$a' vs '$b'"
step "safety number on both sides: $a"

for text in "Hello Bob, it's Alice" "Hi Alice! Bob here" "Lunch at noon?" "sent while you were away"; do
    if grep -rqF "$text" "$work/rendezvous"; then fail "the rendezvous stored the plaintext '$text'"; fi
done
step "the rendezvous holds none of the plaintexts"

step "the scenario passed"
