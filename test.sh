#!/usr/bin/env bash
# The scripted Alice/Bob scenario, with assertions.
#
#   ./test.sh            build and run a rendezvous and two daemons as local processes on
#                        127.0.0.1, data in a temporary directory (this is what CI runs)
#   ./test.sh --compose  the same steps against `docker compose up` (project peerchat-test, so
#                        your own compose stack's volumes are left alone; it needs ports 8443,
#                        7001, 7002, 16686, 4317 and 4318 free)
#
# Steps: register alice and bob; alice -> bob, bob -> alice, alice -> bob; both histories show
# the three messages in order with the right authors; bob stops, alice sends, bob starts and
# receives it; both sides show the same safety number for each other; the rendezvous's data
# contains none of the plaintexts; a client whose certificate comes from another CA is refused by
# bob's node, while the same key certified by our CA gets in. Then where to look in Jaeger.
#
# Exits non-zero at the first failure with a message, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")"

mode=local
case "${1:-}" in
    "") ;;
    --compose) mode=compose ;;
    *) echo "usage: $0 [--compose]" >&2; exit 2 ;;
esac

fail() { echo "test.sh: FAILED: $*" >&2; exit 1; }
step() { echo "test.sh: $*"; }
for tool in openssl python3 curl; do
    command -v "$tool" > /dev/null || fail "$tool is needed"
done

password="correct horse battery"
work="$(mktemp -d)"
mkdir -p "$work/probe"

# --- the two ways to run the processes --------------------------------------------------------
# Each mode defines: start_all, stop_node NAME, start_node NAME, pc NAME ARGS..., peer_address
# NAME, rendezvous_data DIR (copies the rendezvous's data there), probe ARGS... (runs
# `peerchat probe` next to the nodes, with the files of $work/probe under $probe_dir), cleanup.

if [ "$mode" = local ]; then
    cargo build --locked --quiet --bin peerchat --bin peerchat-rendezvous
    target_dir="${CARGO_TARGET_DIR:-target}"
    peerchat="$target_dir/debug/peerchat"
    rendezvous="$target_dir/debug/peerchat-rendezvous"
    pids=()
    probe_dir="$work/probe"
    ca="$work/ca.pem" # written by the rendezvous (--ca-cert-out), as in docker-compose.yml

    cleanup() {
        for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
        wait 2> /dev/null || true
        rm -rf "$work"
    }
    start_all() {
        "$rendezvous" --data-dir "$work/rendezvous" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --relay-listen /ip4/127.0.0.1/tcp/0 --ca-cert-out "$ca" \
            > "$work/rendezvous.out" 2> "$work/rendezvous.log" &
        pids+=($!)
        for _ in $(seq 100); do grep -q "https://" "$work/rendezvous.out" 2> /dev/null && break; sleep 0.1; done
        local port
        port="$(sed -n 's/.*https:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/rendezvous.out")"
        [ -n "$port" ] || fail "the rendezvous did not start (see $work/rendezvous.log)"
        url="https://localhost:$port"
        start_node alice
        start_node bob
    }
    start_node() { # name
        rm -f "$work/$1/api.addr"
        # Each store key wrapped under a passphrase, as on a machine without a keyring.
        [ -s "$work/$1.passphrase" ] || echo "$1's long store passphrase" > "$work/$1.passphrase"
        "$peerchat" daemon --data-dir "$work/$1" --rendezvous "$url" --ca-cert "$ca" \
            --passphrase-file "$work/$1.passphrase" \
            >> "$work/$1.out" 2>> "$work/$1.log" &
        pids+=($!)
        eval "pid_$1=$!"
        for _ in $(seq 200); do [ -s "$work/$1/api.addr" ] && return 0; sleep 0.1; done
        fail "$1's daemon did not start (see $work/$1.log)"
    }
    stop_node() { # name
        local pid
        pid="$(eval echo "\$pid_$1")"
        kill "$pid"
        wait "$pid" 2> /dev/null || true
    }
    node_output() { cat "$work/$1.out" 2> /dev/null || true; }
    pc() { local who="$1"; shift; PEERCHAT_PASSWORD="$password" "$peerchat" --data-dir "$work/$who" "$@"; }
    rendezvous_data() { cp -r "$work/rendezvous" "$1"; }
    probe() { "$peerchat" probe "$@"; }
else
    command -v docker > /dev/null || fail "docker is needed for --compose"
    compose() { docker compose -p peerchat-test "$@"; }
    probe_dir=/tmp/probe
    ca="$work/ca.pem"
    url="https://localhost:8443"

    cleanup() {
        compose down -v --remove-orphans > /dev/null 2>&1 || true
        rm -rf "$work"
    }
    start_all() {
        step "docker compose up (building the image the first time takes a while)"
        compose up -d --build --wait || fail "docker compose up failed (docker compose -p peerchat-test logs)"
        compose cp rendezvous:/ca/ca.pem "$ca" > /dev/null || fail "no CA certificate from the rendezvous"
    }
    start_node() { compose start "$1" > /dev/null && compose up -d --wait "$1" > /dev/null || fail "starting $1"; }
    stop_node() { compose stop "$1" > /dev/null || fail "stopping $1"; }
    node_output() { compose logs --no-color "$1" 2> /dev/null || true; }
    pc() { local who="$1"; shift; compose exec -T -e PEERCHAT_PASSWORD="$password" "$who" peerchat --data-dir /data "$@"; }
    rendezvous_data() { compose cp rendezvous:/data "$1" > /dev/null || fail "copying the rendezvous's data"; }
    probe() {
        chmod -R a+rX "$work/probe"
        compose cp "$work/probe" alice:/tmp > /dev/null || fail "copying the probe's files"
        compose exec -T alice peerchat probe "$@"
    }
fi
trap cleanup EXIT

wait_listening() { # name count
    for _ in $(seq 300); do
        [ "$(node_output "$1" | grep -c "$1 listening on" || true)" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "$1's network did not start"
}
peer_address() { # name: the first address its daemon announced last
    node_output "$1" | sed -n "s/.*$1 listening on \([^ ,]*\).*/\1/p" | tail -1
}
authors_and_texts() { # name peer
    pc "$1" history "$2" --json |
        python3 -c 'import json,sys; [print(m["author"]+": "+m["text"]) for m in json.load(sys.stdin)]'
}

# --- the scenario ----------------------------------------------------------------------------

start_all
step "rendezvous on $url"
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

stop_node bob
pc alice send bob "Are you there? (sent while you were away)" > /dev/null || fail "send to offline bob"
start_node bob
wait_listening bob 2
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

rendezvous_data "$work/rendezvous-copy"
for text in "Hello Bob, it's Alice" "Hi Alice! Bob here" "Lunch at noon?" "sent while you were away"; do
    if grep -rqF "$text" "$work/rendezvous-copy"; then fail "the rendezvous stored the plaintext '$text'"; fi
done
step "the rendezvous holds none of the plaintexts"

# Carol's key, certified twice: by our CA (she registers through the rendezvous's API) and by a
# CA of her own that even calls itself the same. Bob's node must let in only the first.
p="$work/probe"
openssl genpkey -algorithm ed25519 -out "$p/carol.key" 2> /dev/null
openssl req -new -key "$p/carol.key" -subj /CN=carol \
    -addext "subjectAltName=URI:peerchat://user/carol" -outform DER -out "$p/carol.csr.der"
python3 - "$p/carol.csr.der" "$password" > "$p/register.json" << 'EOF'
import base64, json, sys
csr = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
print(json.dumps({"username": "carol", "password": sys.argv[2], "csr": csr}))
EOF
curl -sS --fail-with-body --cacert "$ca" -H "content-type: application/json" \
    --data @"$p/register.json" "$url/v1/accounts" > "$p/registered.json" || fail "registering carol: $(cat "$p/registered.json")"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["certificate"])' "$p/registered.json" > "$p/carol.pem"
openssl genpkey -algorithm ed25519 -out "$p/foreign-ca.key" 2> /dev/null
openssl req -x509 -new -key "$p/foreign-ca.key" -subj "/CN=peerchat CA" -days 1 -out "$p/foreign-ca.pem"
openssl req -new -key "$p/carol.key" -subj /CN=carol \
    -addext "subjectAltName=URI:peerchat://user/carol" -out "$p/carol.csr.pem"
printf 'extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n' > "$p/leaf.ext"
openssl x509 -req -in "$p/carol.csr.pem" -CA "$p/foreign-ca.pem" -CAkey "$p/foreign-ca.key" \
    -set_serial 1 -days 1 -copy_extensions copy -extfile "$p/leaf.ext" -out "$p/carol-foreign.pem" 2> /dev/null
cp "$ca" "$p/ca.pem"
bob_address="$(peer_address bob)"
[ -n "$bob_address" ] || fail "bob's address is unknown"
if out="$(probe bob "$bob_address" --cert "$probe_dir/carol-foreign.pem" --key "$probe_dir/carol.key" --ca "$probe_dir/ca.pem" 2>&1)"; then
    fail "bob's node let in a certificate from another CA: $out"
fi
echo "$out" | grep -q "refused" || fail "the foreign-CA probe failed for another reason: $out"
step "a certificate from another CA is refused by bob's node ($out)"
out="$(probe bob "$bob_address" --cert "$probe_dir/carol.pem" --key "$probe_dir/carol.key" --ca "$probe_dir/ca.pem" 2>&1)" ||
    fail "the same key certified by our CA was refused: $out"
step "the same key certified by our CA gets in ($out)"

# --- traces ----------------------------------------------------------------------------------
if [ "$mode" = compose ]; then
    found=
    for _ in $(seq 30); do
        if curl -sf "http://localhost:16686/api/traces?service=peerchat-alice&lookback=1h&limit=100" |
            python3 -c '
import json, sys
traces = json.load(sys.stdin)["data"]
services = lambda t: {p["serviceName"] for p in t["processes"].values()}
sys.exit(0 if any({"peerchat-alice", "peerchat-bob", "rendezvous"} <= services(t) for t in traces) else 1)
'; then
            found=1
            break
        fi
        sleep 1
    done
    [ -n "$found" ] || fail "Jaeger holds no trace across alice, the rendezvous and bob"
    step "Jaeger holds traces spanning alice, the rendezvous and bob"
    step "see them at http://localhost:16686/search?service=peerchat-alice (operation api, or usecase.send)"
elif [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
    step "spans went to $OTEL_EXPORTER_OTLP_ENDPOINT: in Jaeger, http://localhost:16686/search?service=peerchat-alice"
else
    step "to see each message as one trace in Jaeger: ./test.sh --compose, or start Jaeger"
    step "  (docker run --rm -p 16686:16686 -p 4318:4318 jaegertracing/jaeger:2.15.0) and run"
    step "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 ./test.sh, then open http://localhost:16686"
fi
step "the scenario passed"
