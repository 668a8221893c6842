#!/usr/bin/python3
"""Read load over NBD with libnbd's Python binding, for servers fio cannot reach.

Usage: tls-load.py [--runtime S] [--repeat N] [--jobs a,b] LABEL=URI ...

fio's nbd engine refuses URIs that name local files (tls-certificates=,
tls-psk-file=), and libnbd running as root ignores $HOME/.pki; this runs
the same jobs as shared/bench/fio-nbd.py's read rows with libnbd's
asynchronous API instead (URIs may name local files here), the labels
interleaved round by round, median of N. The same client drives every
server, so the ratios are comparable; absolute numbers are below fio's
(a Python completion callback per request).
"""
import random, sys, time
import nbd

JOBS = {"read-1m-qd8": (1 << 20, 8, False), "randread-4k-qd32": (4096, 32, True)}

def run(uri, bs, qd, rand, runtime):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    size = h.get_size() // bs * bs
    bufs = [nbd.Buffer(bs) for _ in range(qd)]
    free = list(range(qd))
    done = [0]
    pos = [0]
    def issue(i):
        if rand:
            off = random.randrange(size // bs) * bs
        else:
            off = pos[0]; pos[0] = (pos[0] + bs) % size
        def cb(err, i=i):
            done[0] += 1
            free.append(i)
            return 1
        h.aio_pread(bufs[i], off, completion=cb)
    t0 = time.monotonic()
    end = t0 + runtime
    while True:
        now = time.monotonic()
        if now >= end:
            break
        while free:
            issue(free.pop())
        h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    secs = time.monotonic() - t0
    h.shutdown()
    return done[0] / secs, done[0] * bs / secs / (1 << 20)

def main(argv):
    runtime, repeat, only, targets = 5, 3, None, []
    it = iter(argv)
    for a in it:
        if a == "--runtime": runtime = float(next(it))
        elif a == "--repeat": repeat = max(1, int(next(it)))
        elif a == "--jobs": only = next(it).split(",")
        elif "=" in a: targets.append(tuple(a.split("=", 1)))
        else: sys.exit(__doc__)
    if not targets: sys.exit(__doc__)
    print(f"{'job':20}" + "".join(f"{l:>26}" for l, _ in targets) + ("   ratio" if len(targets) > 1 else "") + ("    best" if len(targets) > 2 else ""))
    for name, (bs, qd, rand) in JOBS.items():
        if only and name not in only: continue
        samples = {l: [] for l, _ in targets}
        for _ in range(repeat):
            for label, uri in targets:
                samples[label].append(run(uri, bs, qd, rand, runtime))
        row, vals = f"{name:20}", []
        for label, _ in targets:
            med = sorted(samples[label])[len(samples[label]) // 2]
            row += f"{med[0]:>12.0f} iops {med[1]:>7.0f} MiB/s"; vals.append(med[0])
        if len(vals) > 1: row += f"   {vals[0] / vals[1]:5.2f}"
        if len(vals) > 2: row += f"   {vals[0] / max(vals[1:]):5.2f}"
        print(row, flush=True)

if __name__ == "__main__":
    main(sys.argv[1:])
