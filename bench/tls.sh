#!/usr/bin/env bash
# npm run bench:tls -- [--runtime S] [--repeat N] [--jobs read-1m-qd8,randread-4k-qd32]: NBD over TLS (x509, TLS 1.3 as the
# clients negotiate it), blockd vs qemu-storage-daemon vs nbdkit (file plugin, --tls=require) in one
# run, over TCP on 127.0.0.1, each on its own copy of the same random-data image: read-1m-qd8 and
# randread-4k-qd32 through nbds:// URIs (libnbd, tls-certificates=; bench/tls-load.py), then the connection set-up rate
# (greeting, STARTTLS, TLS handshake with a client certificate, GO, disconnect) per second, one
# client at a time, for HANDSHAKE_SECONDS (default 5) per server.
# Certificates are made with certtool (gnutls-bin) in the scratch dir. Scratch files are removed at exit.
# Env: BENCH_SIZE (default 1G), BENCH_DIR (kept if given), HANDSHAKE_SECONDS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fio_nbd="$root/../shared/bench/fio-nbd.py"
extra=("$@")
size=${BENCH_SIZE:-1G}
hs_seconds=${HANDSHAKE_SECONDS:-5}
dir=${BENCH_DIR:-$(mktemp -d /tmp/bench-tls.XXXXXX)}
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  if [ -z "${BENCH_DIR:-}" ]; then sleep 1; rm -rf "$dir"; fi
}
trap cleanup EXIT

# --- certificates: a CA, a server for 127.0.0.1/localhost, a client ---
pki=$dir/pki; mkdir -p "$pki/server" "$pki/client"
key() { certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile "$1" 2>/dev/null; }
key "$pki/ca-key.pem"
printf 'cn = Bench CA\nca\ncert_signing_key\nexpiration_days = 30\n' >"$pki/ca.info"
certtool --generate-self-signed --load-privkey "$pki/ca-key.pem" --template "$pki/ca.info" --outfile "$pki/ca-cert.pem" 2>/dev/null
issue() { # dir who template-lines
  key "$1/$2-key.pem"; printf '%b' "$3" >"$1/$2.info"
  certtool --generate-certificate --load-privkey "$1/$2-key.pem" --load-ca-certificate "$pki/ca-cert.pem" \
    --load-ca-privkey "$pki/ca-key.pem" --template "$1/$2.info" --outfile "$1/$2-cert.pem" 2>/dev/null
  cp "$pki/ca-cert.pem" "$1/"
}
issue "$pki/server" server 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n'
issue "$pki/client" client 'cn = bench-client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n'

bytes=$(numfmt --from=iec "$size")
head -c "$bytes" /dev/urandom >"$dir/seed.raw"
for who in sut ref kit; do cp --sparse=never "$dir/seed.raw" "$dir/$who.raw"; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A port
for who in sut ref kit; do port[$who]=$(free_port); done

tls=(--object "tls-creds-x509,id=tls0,dir=$pki/server,endpoint=server")
start() { # who cmd...
  local who=$1; shift
  "$@" "${tls[@]}" --blockdev "driver=file,node-name=f0,filename=$dir/$who.raw,cache.direct=off" \
    --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=${port[$who]},tls-creds=tls0" \
    --export type=nbd,id=e0,node-name=f0,name=disk0,writable=on >"$dir/$who.log" 2>&1 &
  echo $! >"$dir/$who.pid"
}
start sut "$root/bin/blockd"
start ref qemu-storage-daemon
nbdkit -f -i 127.0.0.1 -p "${port[kit]}" --tls=require --tls-certificates="$pki/server" -e disk0 file "$dir/kit.raw" >"$dir/kit.log" 2>&1 &
echo $! >"$dir/kit.pid"

uri() { echo "nbds://127.0.0.1:${port[$1]}/disk0?tls-certificates=$pki/client"; }
for i in $(seq 1 100); do
  ok=1; for who in sut ref kit; do nbdinfo --size "$(uri $who)" >/dev/null 2>&1 || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.2
  [ "$i" = 100 ] && { echo "a server did not come up; logs in $dir" >&2; tail -n 5 "$dir"/*.log >&2; exit 1; }
done
echo "# NBD over TLS (x509): $size of random data in $dir; transport: tcp 127.0.0.1"
# fio's nbd engine refuses URIs naming local files (tls-certificates=), and libnbd as root ignores
# $HOME/.pki: the load comes from libnbd's asynchronous API in Python instead (bench/tls-load.py).
/usr/bin/python3 "$root/bench/tls-load.py" "${extra[@]}" "project=$(uri sut)" "qsd=$(uri ref)" "nbdkit=$(uri kit)"

echo "## TLS connection set-up (connect, STARTTLS, handshake, GO, disconnect), one client at a time, ${hs_seconds}s each"
/usr/bin/python3 - "$hs_seconds" "project=$(uri sut)" "qsd=$(uri ref)" "nbdkit=$(uri kit)" <<'PY'
import sys, time, nbd
secs = float(sys.argv[1])
rates = []
for arg in sys.argv[2:]:
    label, uri = arg.split("=", 1)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < secs:
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri(uri)
        h.shutdown()
        n += 1
    rate = n / (time.monotonic() - t0)
    rates.append(rate)
    print(f"{label:10} {rate:10.1f} handshakes/s")
if len(rates) > 1:
    print(f"{'ratio':10} {rates[0] / rates[1]:10.2f} (project/qsd)   vs best other {rates[0] / max(rates[1:]):5.2f}")
PY
