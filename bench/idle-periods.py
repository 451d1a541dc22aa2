#!/usr/bin/env python3
# idle-periods.py: the idle periods of a `perf script` of
# sched:sched_switch, sched:sched_wakeup and timer:hrtimer_expire_entry
# recorded on every CPU (bench/profile.sh idle). An idle period runs from a
# CPU's switch to the idle task until its next switch away from it; each is
# counted by what ran next, what woke that (the idle task itself when the
# wake-up came from another CPU), whether a timer expired on that CPU in
# the period, and what ran before it. docs/benchmarks.md, issue 14, 15.
#
#   perf script -i perf.data > sched.txt; bench/idle-periods.py sched.txt
import collections
import re
import sys
# Idle periods per CPU: from a switch to swapper until the next switch away from it.
# For each: duration, what ran next, who woke it (last wakeup targeting that pid), whether an hrtimer fired on that cpu in the period.
lines=open(sys.argv[1]).read().splitlines()
idle_start={}
timer_in={}
waker={}   # pid -> (waker comm, time, waker cpu)
res=[]
pid2comm={}
for l in lines:
    m=re.match(r'\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)',l)
    if not m: continue
    comm,pid,cpu,t,ev,rest=m.groups(); cpu=int(cpu); t=float(t)
    if ev=='sched:sched_wakeup':
        mm=re.search(r'comm=(.*?) pid=(\d+)',rest)
        waker[mm.group(2)]=(comm,t,cpu)
    elif ev=='timer:hrtimer_expire_entry':
        if cpu in idle_start:
            fn=re.search(r'function=(\S+)',rest)
            timer_in[cpu]=fn.group(1) if fn else '?'
    elif ev=='sched:sched_switch':
        mm=re.search(r'prev_comm=(.*?) prev_pid=(\d+).*next_comm=(.*?) next_pid=(\d+)',rest)
        pc,pp,nc,np_=mm.groups()
        if np_=='0':
            idle_start[cpu]=(t,pc); timer_in.pop(cpu,None)
        elif pp=='0' and cpu in idle_start:
            t0,before=idle_start.pop(cpu)
            w=waker.get(np_,('?',0,-1))
            res.append((t-t0,before,nc,w[0],w[2]==cpu,timer_in.pop(cpu,None)))
tot=sum(r[0] for r in res)
print('idle periods %d, %.3f s idle in all' % (len(res),tot))
by=collections.Counter(); byd=collections.Counter()
for d,b,n,wc,same,tm in res:
    k=(n, 'woken by '+wc.split('-')[0][:14], 'timer '+str(tm) if tm else 'no timer')
    by[k]+=1; byd[k]+=d
for k,v in sorted(byd.items(), key=lambda x:-x[1])[:14]:
    print('%7.1f ms %5d  %s' % (v*1000, by[k], k))
ds=sorted(r[0] for r in res)
print('duration p50 %.1f us p90 %.1f us p99 %.1f us max %.1f us' % (ds[len(ds)//2]*1e6, ds[int(len(ds)*.9)]*1e6, ds[int(len(ds)*.99)]*1e6, ds[-1]*1e6))
c=collections.Counter(); cd=collections.Counter()
for d,b,n,wc,same,tm in res:
    k=(b.split('-')[0][:12], n.split('-')[0][:12], 'timer' if tm else 'ipi/other')
    c[k]+=1; cd[k]+=d
print('before -> after:')
for k,v in sorted(cd.items(), key=lambda x:-x[1])[:10]:
    print('%7.1f ms %5d  %s' % (v*1000, c[k], k))
