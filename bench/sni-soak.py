#!/usr/bin/env python3
# sni-soak.py SECONDS: a mixed load on an SNI-routing lbctl listener at 127.0.0.1:39443
# (route "a.test" to an echo backend, tls_inspect_timeout = "2s"; docs/benchmarks.md,
# issue 14, 12.): 4 clients send real ClientHellos plus 0 B to 20 KB more in random
# pieces and check every byte comes back; 2 open 50 connections at a time with half a
# hello and drop them after 0.5-3 s; 2 send plain HTTP or a hello for an unrouted name.
# It prints what it did; compare with lbctl_connections_total and
# lbctl_connections_rejected_total, and lbctl's descriptors before and after.
import ssl, socket, sys, time, threading, random, os
def mk(name):
    ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx.wrap_bio(inc, out, server_hostname=name)
    try: o.do_handshake()
    except ssl.SSLWantReadError: pass
    return out.read()
good, other = mk("a.test"), mk("b.test")
addr = ("127.0.0.1", 39443)
dur = float(sys.argv[1])
stats = {"ok":0, "bad":0, "slow":0, "garbage":0, "noroute":0, "big":0}
lock = threading.Lock()
def inc(k):
    with lock: stats[k]+=1
def good_worker():
    end=time.time()+dur
    while time.time()<end:
        s=socket.create_connection(addr)
        extra = os.urandom(random.choice([0, 10, 3000, 20000]))
        payload = good+extra
        # send in random pieces
        i=0
        while i < len(payload):
            k=random.choice([1, 7, 100, 1500, 100000])
            s.sendall(payload[i:i+k]); i+=k
        s.shutdown(socket.SHUT_WR)
        got=b""
        s.settimeout(10)
        while True:
            b=s.recv(65536)
            if not b: break
            got+=b
        s.close()
        inc("ok" if got==payload else "bad")
        if len(extra)>8000: inc("big")
def slow_worker():
    end=time.time()+dur
    while time.time()<end:
        conns=[]
        for _ in range(50):
            s=socket.create_connection(addr); s.sendall(good[:len(good)//2]); conns.append(s)
        time.sleep(random.uniform(0.5, 3))  # some cross the 2s timeout, some close first
        for s in conns:
            s.close(); inc("slow")
def junk_worker():
    end=time.time()+dur
    while time.time()<end:
        s=socket.create_connection(addr)
        if random.random()<0.5:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n"); inc("garbage")
        else:
            s.sendall(other); inc("noroute")
        s.settimeout(10)
        try:
            while s.recv(100): pass
        except Exception: pass
        s.close()
ts=[threading.Thread(target=f) for f in [good_worker]*4+[slow_worker]*2+[junk_worker]*2]
for t in ts: t.start()
for t in ts: t.join()
print(stats)
