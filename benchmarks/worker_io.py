"""The worker fed directly: how much of its compute thread goes to the model and how much to
messages (serialization, sends), measured with cProfile on that thread.

A fake broker (a ROUTER in this process, beating so the worker stays registered) opens N base
sessions on one in-process `Worker` (a random-weight small Llama on the CPU) and counts the FRAMEs
that come back. Prints tokens/s, the compute thread's seconds per 1k tokens in the scheduler's
step and in everything message-related, and the profile's top entries. With `--rounds R`, R
rounds of sessions one after another (each closed before the next opens) on the default 4 GiB
CPU KV cache, and the process's resident memory after each: with a LIFO free list it stays at
the first round's working set instead of creeping over the (lazily paged) cache.

    .venv/bin/python benchmarks/worker_io.py [--sessions 64 --tokens 64] [--rounds R] [--smoke]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import zmq  # noqa: E402

from cloud_worker.backbone import Backbone  # noqa: E402
from cloud_worker.config import WorkerConfig  # noqa: E402
from cloud_worker.worker import Worker  # noqa: E402
from routing.protocol import MsgType, decode, encode, msg  # noqa: E402


def small_llama(layers: int, hidden: int, vocab: int) -> Backbone:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=False)
    return Backbone(LlamaForCausalLM(cfg), None)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(bb: Backbone, sessions: int, tokens: int, batch: int, rounds: int = 1) -> dict:
    ctx = zmq.Context.instance()
    broker = ctx.socket(zmq.ROUTER)
    broker.setsockopt(zmq.LINGER, 0)
    port = broker.bind_to_random_port("tcp://127.0.0.1")
    kv = {} if rounds > 1 else {"kv_tokens": sessions * (tokens + 16) + 64}
    cfg = WorkerConfig(max_batch=batch, chunk_tokens=max(512, batch), **kv)
    import inspect  # the same script measures the code before `config=` replaced `engine=`

    kw = "config" if "config" in inspect.signature(Worker).parameters else "engine"
    w = Worker(bb, f"tcp://127.0.0.1:{port}", **{kw: cfg})
    prof = cProfile.Profile()

    def compute() -> None:
        prof.enable()
        try:
            w.run()
        finally:
            prof.disable()

    t = threading.Thread(target=compute, daemon=True)
    t.start()
    ident, *frames = broker.recv_multipart()
    assert decode(frames, tensors=False).type is MsgType.READY
    beat, rss = 0.0, []
    want, got = sessions * tokens * rounds, 0
    start = cpu0 = None
    deadline = time.monotonic() + 600
    opened: list[bytes] = []
    base = 0  # frames before this round
    while got < want and time.monotonic() < deadline:
        if not opened or got - base >= sessions * tokens:  # a round is done: close it, open the next
            for sid in opened:
                broker.send_multipart([ident, *encode(msg(MsgType.CLOSE, session=sid))])
            if opened:
                rss.append(rss_mb())
            opened, base = [os.urandom(16) for _ in range(sessions)], got
            for sid in opened:
                broker.send_multipart([ident, *encode(msg(
                    MsgType.OPEN, session=sid, prompt=[1, 2, 3, 4, 5, 6, 7, 8], max_new_tokens=tokens,
                    mode="base", window=tokens, sampling={}, fingerprint=bb.fingerprint, wire_layers=[],
                    eos=None))])
        now = time.monotonic()
        if now >= beat:
            broker.send_multipart([ident, *encode(msg(MsgType.HEARTBEAT, broker=b"benchmrk"))])
            beat = now + 0.2
        if not broker.poll(100):
            continue
        while True:
            try:
                _, *frames = broker.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            m = decode(frames, tensors=False)
            if m.type is MsgType.FRAME:
                if start is None:
                    start, cpu0 = time.perf_counter(), time.process_time()
                got += 1
            elif m.type is MsgType.ERROR:
                raise RuntimeError(f"worker answered {m['code']}: {m['detail']}")
    rss.append(rss_mb())
    dt = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    w.running = False
    t.join(timeout=5)
    w.close()
    broker.close(0)
    if got < want:
        raise RuntimeError(f"only {got}/{want} frames in time")
    st = pstats.Stats(prof)
    step = sum(v[3] for k, v in st.stats.items() if k[2] == "step" and k[0].endswith("scheduler.py"))
    io_names = {("worker.py", "send"), ("worker.py", "flush"), ("protocol.py", "encode")}
    io_s = sum(v[3] for k, v in st.stats.items() if (Path(k[0]).name, k[2]) in io_names
               and not any((Path(c[0]).name, c[2]) in io_names for c in v[4]))  # outermost only
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return {"tokens": got, "tok_s": got / dt, "process_cpu_s_per_1k": cpu / got * 1e3,
            "step_s_per_1k": step / got * 1e3, "messages_s_per_1k": io_s / got * 1e3,
            "profile": out.getvalue(), "rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of sessions one after another (RSS)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 4 sessions of 8 tokens, 2 layers")
    ap.add_argument("--profile", action="store_true", help="print the profile's top entries")
    args = ap.parse_args()
    if args.smoke:
        args.sessions, args.tokens, args.layers, args.hidden = 4, 8, 2, 64
    torch.set_num_threads(1)
    bb = small_llama(args.layers, args.hidden, 512)
    r = run(bb, args.sessions, args.tokens, args.batch, args.rounds)
    print(f"worker fed directly: {args.sessions} sessions x {args.tokens} tokens, batch {args.batch}, "
          f"Llama {args.layers}x{args.hidden} (random weights), CPU, 1 torch thread")
    print(f"  {r['tok_s']:,.0f} tok/s; process CPU {r['process_cpu_s_per_1k']:.3f} s per 1k tokens; "
          f"compute thread per 1k tokens: step {r['step_s_per_1k']:.3f} s, "
          f"messages (encode + send) {r['messages_s_per_1k']:.3f} s")
    if args.rounds > 1:
        print("  resident MiB after each round: " + ", ".join(f"{x:.0f}" for x in r["rss_mb"]))
    if args.profile:
        print(r["profile"])


if __name__ == "__main__":
    main()
