#!/usr/bin/env python3
"""Soak: 50,000 messages between two daemons over a rendezvous, all release builds on 127.0.0.1.

Alice sends, bob answers every tenth. At 10k, 20k and 50k messages (once bob holds them all and
alice's outbox is empty) it reads each process's RSS (/proc/PID/status) and the size on disk of
its data directory, and prints a table. The daemons' stores are passphrase-protected (sealed),
as a user's would be.

    cargo build --release --bin peerchat --bin peerchat-rendezvous
    scripts/soak.py [--messages 50000] [--keep DIR] [--no-restart]

After the last checkpoint both daemons start again on their stores and take 1,000 more messages:
memory that comes back at once grows with the history; memory that does not grew with uptime.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PEERCHAT = os.path.join(TARGET, "release", "peerchat")
RENDEZVOUS = os.path.join(TARGET, "release", "peerchat-rendezvous")
PASSWORD = "correct horse battery"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class Api:
    def __init__(self, data_dir):
        self.address = open(os.path.join(data_dir, "api.addr")).read().strip()
        self.token = open(os.path.join(data_dir, "api-token")).read().strip()
        host, port = self.address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.local = threading.local()

    def call(self, method, path, body=None):
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.token}", "Host": "127.0.0.1"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.local.conn.request(method, path, data, headers)
        response = self.local.conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return json.loads(payload) if payload else None


def wait_for(what, check, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    sys.exit(f"soak: never {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--keep", help="keep the data directories here")
    parser.add_argument("--no-restart", dest="restart", action="store_false",
                        help="skip the restart at the end")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="peerchat-soak-")
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        rv_dir = os.path.join(work, "rv")
        rv = subprocess.Popen(
            [RENDEZVOUS, "--data-dir", rv_dir, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--relay-listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "rv.log"), "w"),
            env=dict(os.environ, RUST_LOG="warn"), text=True)
        procs.append(rv)
        port = re.search(r"https://127\.0\.0\.1:(\d+)", rv.stdout.readline()).group(1)
        url = f"https://localhost:{port}"
        daemons = {}

        def start(name):
            data = os.path.join(work, name)
            passphrase = os.path.join(work, f"{name}.passphrase")
            with open(passphrase, "w") as f:
                f.write(f"{name}'s long soak passphrase\n")
            proc = subprocess.Popen(
                [PEERCHAT, "daemon", "--data-dir", data, "--rendezvous", url,
                 "--passphrase-file", passphrase],
                stdout=open(os.path.join(work, f"{name}.out"), "a"),
                stderr=open(os.path.join(work, f"{name}.log"), "a"),
                env=dict(os.environ, RUST_LOG="warn"))
            procs.append(proc)
            wait_for(f"{name}'s API", lambda: os.path.exists(os.path.join(data, "api.addr")), 60)
            return proc, data

        for name in ["alice", "bob"]:
            proc, data = start(name)
            subprocess.run([PEERCHAT, "--data-dir", data, "register", name], check=True,
                           env=dict(os.environ, PEERCHAT_PASSWORD=PASSWORD),
                           stdout=subprocess.DEVNULL)
            daemons[name] = (proc, data, Api(data))
        alice, bob = daemons["alice"][2], daemons["bob"][2]

        def held(api, peer):
            for c in api.call("GET", "/api/v1/conversations"):
                if c.get("peer") == peer or c.get("id") == peer or c.get("name") == peer:
                    return c["messages"]
            return 0

        checkpoints = [n for n in (10_000, 20_000, 50_000) if n <= args.messages] or [args.messages]
        rows = []
        sent = 0
        started = time.time()
        lock = threading.Lock()

        def sender(start, end):
            for i in range(start, end):
                alice.call("POST", "/api/v1/messages",
                           {"to": "bob", "text": f"soak message {i}: the quick brown fox jumps over the lazy dog"})
                if i % 10 == 9:
                    bob.call("POST", "/api/v1/messages", {"to": "alice", "text": f"answer {i}"})

        def measure(label):
            wait_for("bob holding every message", lambda: alice.call("GET", "/api/v1/status")["outbox"] == 0
                     and bob.call("GET", "/api/v1/status")["outbox"] == 0)
            row = {"messages": label, "seconds": round(time.time() - started)}
            for name, (proc, data, _) in daemons.items():
                row[f"{name}_rss_mib"] = round(rss_kib(proc.pid) / 1024, 1)
                row[f"{name}_disk_mib"] = round(disk_bytes(data) / 2**20, 1)
            row["rv_rss_mib"] = round(rss_kib(rv.pid) / 1024, 1)
            row["rv_disk_mib"] = round(disk_bytes(rv_dir) / 2**20, 1)
            row["bob_holds"] = held(bob, "alice")
            rows.append(row)
            print(json.dumps(row), flush=True)

        for target in checkpoints:
            while sent < target:
                batch = min(1000, target - sent)
                threads = [threading.Thread(target=sender, args=(sent + k * batch // 4, sent + (k + 1) * batch // 4))
                           for k in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                sent += batch
                # Back-pressure: let delivery keep up.
                wait_for("alice's outbox drained",
                         lambda: alice.call("GET", "/api/v1/status")["outbox"] < 200)
            measure(f"{target:,}")
        # Whether what the daemons hold grows with their history or with their uptime: both
        # start again on the same stores and take 1,000 more messages.
        if args.restart:
            for name in ["alice", "bob"]:
                proc = daemons[name][0]
                proc.terminate()
                proc.wait(30)
                proc, data = start(name)
                daemons[name] = (proc, data, Api(data))
            alice, bob = daemons["alice"][2], daemons["bob"][2]
            wait_for("both daemons listening again", lambda: all(
                open(os.path.join(work, f"{n}.out")).read().count("listening on") >= 2
                for n in daemons))
            threads = [threading.Thread(target=sender, args=(sent + k * 250, sent + (k + 1) * 250))
                       for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent += 1000
            measure(f"{sent:,}, both restarted at {sent - 1000:,}")
        print()
        print("| messages | alice RSS | bob RSS | rendezvous RSS | alice disk | bob disk | rendezvous disk |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['messages']} | {r['alice_rss_mib']} MiB | {r['bob_rss_mib']} MiB | {r['rv_rss_mib']} MiB "
                  f"| {r['alice_disk_mib']} MiB | {r['bob_disk_mib']} MiB | {r['rv_disk_mib']} MiB |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
