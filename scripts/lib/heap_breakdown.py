"""Groups heaptrack's live ("leaked") bytes by component, per connected instance.

    heap_breakdown.py STACKS CLIENTS [N_UNCLASSIFIED]

STACKS: `heaptrack_print -F STACKS --flamegraph-cost-type leaked` of a registry killed while
CLIENTS instances were connected (scripts/heap-per-instance.sh). Each stack goes to the first
rule it matches, in order. N_UNCLASSIFIED: print the largest stacks no rule matched.
"""
import sys, re, collections

N=int(sys.argv[2]) if len(sys.argv)>2 else 10000
rules=[
 ("rustls receive buffer (DeframerVecBuffer)", lambda s: "DeframerVecBuffer" in s),
 ("rustls record keys (AES-GCM encrypter+decrypter)", lambda s: "rustls" in s and ("encrypter" in s or "decrypter" in s)),
 ("rustls other connection state", lambda s: "rustls" in s),
 ("TLS stream inside tokio::io::split's Arc", lambda s: "split<> (split.rs)" in s),
 ("frame reader buffer", lambda s: "framed_read.rs" in s),
 ("frame writer buffer", lambda s: "framed_write.rs" in s),
 ("tokio task: writer (write_loop)", lambda s: "bind_new_task" in s and "listener.rs" not in s),
 ("tokio task: connection (session loop)", lambda s: "bind_new_task" in s),
 ("outbound queue (tokio mpsc)", lambda s: "channel (state.rs)" in s or "OutboundTx" in s),
 ("record as registered (held by the history's joined event)", lambda s: "register (state.rs)" in s and "build_event" not in s and "emit" not in s),
 ("event history (events)", lambda s: "emit (state.rs)" in s or "build_event" in s or "keep_in_history" in s or "number_event" in s),
 ("current record (copied on the first report)", lambda s: "apply_report" in s and "make_mut" in s),
 ("samples history (VecDeque)", lambda s: "apply_report" in s and ("push_back" in s)),
 ("joined event's detail (JSON map: session, peer)", lambda s: "new_leaf" in s and "session.rs" in s and "prost" not in s and "pb_gen" not in s and "apply_report" not in s),
 ("report metrics maps (decoded, kept in the record)", lambda s: "prost" in s or "pb_gen" in s or "apply_report" in s),
 ("tokio I/O registration", lambda s: "RegistrationSet" in s or "add_source" in s),
 ("cancellation tokens, OutQueue, CommandsSent", lambda s: "CancellationToken" in s or "OutQueue" in s or "cancellation_token" in s or "CommandsSent" in s or ("default<> (sync.rs)" in s and "session.rs" in s)),
 ("instances map and other hash maps", lambda s: "reserve_rehash" in s),
 ("SQLite page cache", lambda s: "sqlite" in s),
]
agg=collections.Counter(); calls=collections.Counter(); other=[]
for line in open(sys.argv[1]):
    line=line.rstrip('\n'); i=line.rfind(' ')
    st,n=line[:i],int(line[i+1:])
    if n<=0: continue
    for name,f in rules:
        if f(st): agg[name]+=n; break
    else:
        agg["other"]+=n; other.append((n,st))
tot=sum(agg.values())
print("| component | bytes per instance | MB |")
for k,v in agg.most_common():
    print("| %s | %d | %.2f |"%(k,v/N,v/1e6))
print("| total live heap | %d | %.2f |"%(tot/N,tot/1e6))
if len(sys.argv)>3:
  other.sort(key=lambda r:-r[0])
  for n,st in other[:int(sys.argv[3])]:
    fr=[re.sub(r'::h[0-9a-f]{16}','',f)[:100] for f in st.split(';') if f]
    print("==== %.2f MB"%(n/1e6)); print("   "+"\n   ".join(fr[-12:]))
