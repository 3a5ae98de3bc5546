"""The paged engine on the CPU: token for token equal to the single-sequence reference (fp32),
rollback as a length change, chunked prefill mixed with decodes, fair turns beyond the batch
limit, admission by the KV budget, and batched token choice equal to routing/sampling.py.

Longer than 350 lines: every test shares the module's fp32 tiny backbone and open/drain helpers,
and RESULTS.md names its tests by this path."""

from __future__ import annotations

import os

import pytest
import torch

from cloud_worker.backbone import Backbone
from cloud_worker.config import WorkerConfig
from cloud_worker.scheduler import Scheduler
from lab.reference import ReferenceGenerator
from routing.errors import InputError
from routing.protocol import ProtocolError, msg
from routing.sampling import Sampling, choose_tokens, noise_key, pick_token


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    """A random Llama (GQA, 3 layers) built from a config: nothing downloaded or trained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, rope_theta=10000.0, tie_word_embeddings=False)
    return Backbone(LlamaForCausalLM(cfg), None)


def _open(bb, prompt, max_new=12, mode="base", window=64, wire_layers=(), sampling=None):
    return msg("OPEN", session=os.urandom(16), prompt=list(prompt), max_new_tokens=max_new, mode=mode,
               window=window, sampling=sampling or {}, fingerprint=bb.fingerprint,
               wire_layers=list(wire_layers), eos=None)


def _prompts(n, seed=1, lo=1, hi=40):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _drain(sched, limit=500):
    frames = []
    for _ in range(limit):
        if not sched.has_work():
            break
        frames += sched.step()
    return frames


def _generated(sched, m):
    s = sched.sessions[m.session]
    return s.seq[s.n_prompt :]


def test_paged_engine_equals_reference(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(chunk_tokens=24, block_size=8, cpu_kv_mb=16))
    assert sched.runner.paged
    prompts = _prompts(6)
    opens = [_open(tiny, p) for p in prompts]
    for m in opens[:3]:
        sched.handle(m)
    sched.step()
    for m in opens[3:]:  # join between steps: prefill chunks ride with the others' decodes
        sched.handle(m)
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    for m, p in zip(opens, prompts, strict=True):
        assert _generated(sched, m) == ref.generate(p, 12, "base", stop_at_eos=False).tokens


def test_hf_engine_path_equals_reference(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(engine="hf", chunk_tokens=16))
    assert not sched.runner.paged
    prompts = _prompts(3, seed=2)
    opens = [_open(tiny, p, max_new=6) for p in prompts]
    for m in opens:
        sched.handle(m)
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    for m, p in zip(opens, prompts, strict=True):
        assert _generated(sched, m) == ref.generate(p, 6, "base", stop_at_eos=False).tokens


def test_chunked_prefill_never_stalls_decodes(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(chunk_tokens=16, block_size=8, cpu_kv_mb=16))
    short = [_open(tiny, p, max_new=30) for p in _prompts(3, seed=3, hi=6)]
    for m in short:
        sched.handle(m)
    sched.step()  # the short prompts are in: from here on they decode
    long_prompt = _prompts(1, seed=4, lo=100, hi=101)[0]
    big = _open(tiny, long_prompt, max_new=4)
    sched.handle(big)
    s_big = sched.sessions[big.session]
    steps = 0
    while s_big.kv_len < len(long_prompt):
        frames = sched.step()
        steps += 1
        assert {f.session for f in frames} >= {m.session for m in short}  # every decode ran
        assert sum(n for _, n in sched.runner.last_rows) <= 16
    assert steps >= 100 // 16  # the prompt went in chunks
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    assert _generated(sched, big) == ref.generate(long_prompt, 4, "base", stop_at_eos=False).tokens
    for m in short:
        assert _generated(sched, m) == ref.generate(m["prompt"], 30, "base", stop_at_eos=False).tokens


def test_fair_turns_beyond_the_batch_limit(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(max_batch=4, max_sessions=16, block_size=8, cpu_kv_mb=16))
    opens = [_open(tiny, p, max_new=10) for p in _prompts(16, seed=5, hi=8)]
    for m in opens:
        sched.handle(m)
    for _ in range(8):  # 4x more sessions than rows: two full rounds
        assert len(sched.step()) <= 4
    gen = [len(_generated(sched, m)) for m in opens]
    assert min(gen) == 2 and max(gen) == 2  # every session advanced, none more than its share
    assert sched.longest_wait_steps == 3  # each waited 3 steps for its turn
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    assert all(_generated(sched, m) == ref.generate(m["prompt"], 10, "base", stop_at_eos=False).tokens
               for m in opens)


def test_rollback_is_a_length_change(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, cpu_kv_mb=16))
    prompt = _prompts(1, seed=6, lo=13, hi=14)[0]
    m = _open(tiny, prompt, max_new=20, mode="spa", wire_layers=[0, 2])
    sched.handle(m)
    for _ in range(12):
        sched.step()
    s = sched.sessions[m.session]
    n, table = s.n_prompt, list(s.block_table)
    hidden = sched.handle(msg("REQUEST", session=m.session, pos=n + 9, epoch=0))[0]
    assert hidden.tensors[0].shape == (2, tiny.d_model)
    sched.handle(msg("CORRECT", session=m.session, pos=n + 3, epoch=0, token=5))
    assert s.kv_len == n + 3 and s.block_table == table and s.epoch == 1 and s.wasted == 9
    assert sorted(s.ring) == []
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    head = s.seq[: n + 4]  # prompt + 3 generated + the corrected token
    assert s.seq[n + 4 :] == ref.generate(head, 16, "base", stop_at_eos=False).tokens
    with pytest.raises(ProtocolError, match="BAD_MESSAGE"):
        sched.handle(msg("CORRECT", session=m.session, pos=n + 5, epoch=1, token=97))
    with pytest.raises(ProtocolError, match="BAD_POSITION"):
        sched.handle(msg("CORRECT", session=m.session, pos=n + 5, epoch=0, token=1))
    free = sched.blocks.free_tokens
    assert sched.handle(msg("CLOSE", session=m.session))[0].type == "DONE"
    assert sched.blocks.free_tokens > free and not sched.sessions


def test_lockstep_ships_wire_layers_and_hidden_matches_reference(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, cpu_kv_mb=16))
    prompt = _prompts(1, seed=7)[0]
    m = _open(tiny, prompt, mode="full", wire_layers=[0, 1, 2])
    sched.handle(m)
    f = sched.step()[0]
    out = tiny.forward(torch.tensor([prompt]))
    want = torch.stack([out.hidden[i][0, -1] for i in (0, 1, 2)]).half().numpy()
    assert f.tensors[1].shape == (3, tiny.d_model)
    assert abs(f.tensors[1].astype("float32") - want.astype("float32")).max() < 1e-2
    assert abs(f.tensors[0].astype("float32") - out.z[0, -1].half().float().numpy()).max() < 1e-2
    assert not sched.has_work()
    with pytest.raises(ProtocolError, match="BAD_POSITION"):
        sched.handle(msg("TOKEN", session=m.session, pos=f["pos"] + 1, epoch=0, token=3))
    sched.handle(msg("TOKEN", session=m.session, pos=f["pos"], epoch=0, token=3))
    assert sched.step()[0]["pos"] == f["pos"] + 1


def test_admission_by_kv_budget(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, kv_tokens=64))
    sched.handle(_open(tiny, [1] * 20, max_new=20))  # 40 tokens = 5 blocks of 8 (of 8)
    with pytest.raises(ProtocolError, match="BUSY"):
        sched.handle(_open(tiny, [1] * 20, max_new=10))  # 30 more do not fit
    sched.handle(_open(tiny, [1] * 10, max_new=14))  # 24 do
    with pytest.raises(ProtocolError, match="TOO_LARGE"):
        sched.handle(_open(tiny, [1] * 200, max_new=100))  # over the model's context


def test_free_pages_are_a_stack():
    """LIFO: a new session gets the pages the last one gave back, so a worker serving session
    after session touches the same few pages, not the whole cache."""
    from cloud_worker.block_manager import BlockManager

    bm = BlockManager(64, 8)
    assert bm.take(3) == [1, 2, 3]
    bm.give_back([1, 2, 3], 0)
    assert bm.take(2) == [1, 2]
    assert bm.take(3) == [3, 4, 5]
    bm.give_back([5, 3], 0)  # another session's table, freed last: its pages come first
    assert bm.take(3) == [5, 3, 6]


def test_sessions_one_after_another_reuse_the_same_pages(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, cpu_kv_mb=16, chunk_tokens=64))
    used: set[int] = set()
    for p in _prompts(6, seed=11, lo=5, hi=30):
        pair = [_open(tiny, p, max_new=3), _open(tiny, p[::-1], max_new=3)]
        for m in pair:
            sched.handle(m)
        _drain(sched)
        for m in pair:
            used.update(sched.sessions[m.session].block_table)
            sched.handle(msg("CLOSE", session=m.session))
        assert not sched.sessions and sched.blocks.reserved == 0
    most = 2 * sched.blocks.blocks_for(30 + 3)  # two of the longest sessions at once (FIFO: ~4×)
    assert max(used) <= most < sched.blocks.num_blocks // 10  # the working set, not the cache


def test_capacity_from_the_kv_budget(tiny):
    """READY's capacity: what the KV budget holds at session_tokens each, or --max-sessions."""
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, kv_tokens=1024, session_tokens=256))
    assert sched.capacity == 4
    cfg = WorkerConfig(block_size=8, kv_tokens=1024, session_tokens=256)
    Scheduler(tiny, config=cfg)
    assert cfg == WorkerConfig(block_size=8, kv_tokens=1024, session_tokens=256)  # not mutated
    for _ in range(6):  # the announced capacity is an estimate: the KV budget admits
        sched.handle(_open(tiny, [1] * 4, max_new=4))  # small sessions beyond it
    for _ in range(3):
        sched.handle(_open(tiny, [1] * 200, max_new=50))  # 32 blocks each: 6 + 96 of 128
    with pytest.raises(ProtocolError, match="BUSY"):
        sched.handle(_open(tiny, [1] * 200, max_new=50))  # and refuses what does not fit
    capped = Scheduler(tiny, config=WorkerConfig(block_size=8, kv_tokens=1024, max_sessions=2))
    for _ in range(2):
        capped.handle(_open(tiny, [1] * 4, max_new=4))
    with pytest.raises(ProtocolError, match="BUSY"):
        capped.handle(_open(tiny, [1] * 4, max_new=4))  # --max-sessions is a hard limit
    assert capped.capacity == 2


def test_idle_lease_is_the_sessions(tiny):
    """The idle lease lives in the session: renewed by every message taken, expired by time."""
    import time

    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, cpu_kv_mb=16))
    a, b = _open(tiny, [1, 2, 3]), _open(tiny, [4, 5, 6])
    sched.handle(a)
    sched.handle(b)
    now = time.monotonic()
    assert sched.expired(5.0, now) == []
    assert set(sched.expired(5.0, now + 6)) == {a.session, b.session}
    time.sleep(0.01)
    sched.handle(msg("ACK", session=a.session, pos=3))
    assert sched.expired(0.005, time.monotonic()) == [b.session]


def test_seeded_sampling_through_the_engine(tiny):
    sched = Scheduler(tiny, config=WorkerConfig(block_size=8, cpu_kv_mb=16))
    samplings = [Sampling(0.8, 0, 1), Sampling(1.2, 10, 7), Sampling()]
    prompts = _prompts(3, seed=8)
    opens = [_open(tiny, p, sampling=sp.to_dict()) for p, sp in zip(prompts, samplings, strict=True)]
    for m in opens:
        sched.handle(m)
    _drain(sched)
    ref = ReferenceGenerator(tiny, None)
    for m, p, sp in zip(opens, prompts, samplings, strict=True):
        assert _generated(sched, m) == ref.generate(p, 12, "base", sp, stop_at_eos=False).tokens


def test_batched_token_choice_equals_pick_token():
    torch.manual_seed(0)
    logits = torch.randn(64, 501) * 3
    samplings = [Sampling(), Sampling(0.7, 0, 3), Sampling(1.0, 20, 5), Sampling(1.5, 600, 2**40)] * 16
    positions = list(range(100, 164))
    want = [pick_token(lg, sp, p) for lg, sp, p in zip(logits, samplings, positions, strict=True)]
    got = choose_tokens(logits, torch.tensor([s.temperature for s in samplings], dtype=torch.float64),
                        torch.tensor([s.top_k for s in samplings]),
                        torch.tensor([noise_key(s.seed, p) for s, p in zip(samplings, positions, strict=True)]))
    assert got.tolist() == want
    assert len(set(want[1::4])) > 8  # seeded rows really sample


def test_config_ranges():
    with pytest.raises(InputError, match="max_batch"):
        WorkerConfig(max_batch=-1)
    with pytest.raises(InputError, match="power of two"):
        WorkerConfig(block_size=24)
    with pytest.raises(InputError, match="engine"):
        WorkerConfig(engine="fast")
    with pytest.raises(InputError, match="chunk_tokens"):
        WorkerConfig(chunk_tokens=8)
    # 0 = auto, made concrete per device; what a user sets stays as set
    assert (WorkerConfig().for_device(cuda=False).max_batch, WorkerConfig().for_device(cuda=False).chunk_tokens) == (64, 512)
    gpu = WorkerConfig(graph_max_batch=512).for_device(cuda=True)
    assert (gpu.max_batch, gpu.chunk_tokens) == (512, 8192)
    assert WorkerConfig(max_batch=8, chunk_tokens=24).for_device(cuda=True).max_batch == 8
    assert WorkerConfig(max_batch=2000).for_device(cuda=True).chunk_tokens == 8192


def test_paged_decode_kernel_matches_reference():
    attention = pytest.importorskip("cloud_worker.attention")
    if attention.triton is None or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET")):
        pytest.skip("Triton kernel: needs cuda (or TRITON_INTERPRET=1)")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    for H, Hkv, D, B in [(4, 2, 32, 3), (8, 8, 64, 3), (4, 2, 32, 1)]:  # the last one splits
        bs = 8
        kc, vc = torch.randn(40 * bs, Hkv, D, device=dev), torch.randn(40 * bs, Hkv, D, device=dev)
        bt = torch.randint(1, 40, (B, 10), dtype=torch.int32, device=dev)
        lens = torch.tensor([1, 17, 70][-B:], dtype=torch.int32, device=dev)
        q = torch.randn(B, H, D, device=dev)
        got = attention.paged_decode(q, kc, vc, bt, lens, D**-0.5, bs)
        want = attention.decode_reference(q.cpu(), kc.cpu(), vc.cpu(), bt.cpu(), lens.cpu(), bs, D**-0.5)
        assert (got.cpu() - want).abs().max() < 1e-4


def test_decode_graph_buffers_equal_reference(tiny):
    """The cuda path — fused Triton kernels, split-K paged decode, CUDA graphs (static buffers,
    bucketed batch sizes, padded rows writing the scratch slot) — equals the reference in fp32.
    Runs on cuda, or on the CPU with TRITON_INTERPRET=1 (graphs replaced by plain calls)."""
    attention = pytest.importorskip("cloud_worker.attention")
    if attention.triton is None or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET")):
        pytest.skip("Triton kernel: needs cuda (or TRITON_INTERPRET=1)")
    import copy

    bb = Backbone(copy.deepcopy(tiny.model).cuda(), None) if torch.cuda.is_available() else tiny
    sched = Scheduler(bb, config=WorkerConfig(chunk_tokens=24, block_size=8, cpu_kv_mb=16, max_batch=8,
                                              graph_max_batch=6))
    runner = sched.runner
    if not runner.cuda:
        runner.decode_kernel = runner.model.fused = True
        runner._capture()
    assert sorted(runner.graphs) == [1, 2, 4, 6] and runner.model.fused
    prompts = _prompts(7)
    opens = [_open(bb, p, max_new=10, mode="spa", wire_layers=[0, 2]) for p in prompts]
    for m in opens[:2]:
        sched.handle(m)
    sched.step()
    for m in opens[2:]:
        sched.handle(m)
    _drain(sched)
    ref = ReferenceGenerator(bb, None)
    for m, p in zip(opens, prompts, strict=True):
        assert _generated(sched, m) == ref.generate(p, 10, "base", stop_at_eos=False).tokens
    s = sched.sessions[opens[3].session]  # the ring holds what HF computes at each position
    out = bb.forward(torch.tensor([s.seq[:-1]], device=bb.device))
    assert len(s.ring) == 10
    for pos, (hid,) in s.ring.items():  # fp16 wire: one tensor per position
        want = torch.stack([out.hidden[i][0, pos - 1] for i in (0, 2)]).half()
        assert (hid.float() - want.float()).abs().max() < 1e-2


def test_mixed_steps_replay_the_decode_graph_and_run_prefill_eagerly(tiny, monkeypatch):
    """A step with decodes and prefill chunks: the decodes through the graph buffers, the chunks
    eagerly, outputs joined in run order — tokens and ring equal the reference. On the CPU: the
    graphs are plain calls and the decode kernel is its PyTorch reference."""
    from cloud_worker import attention

    monkeypatch.setattr(attention, "paged_decode", lambda q, kc, vc, bt, lens, scale, bs:
                        attention.decode_reference(q, kc, vc, bt, lens, bs, scale))
    sched = Scheduler(tiny, config=WorkerConfig(chunk_tokens=24, block_size=8, cpu_kv_mb=16, max_batch=8,
                                                graph_max_batch=6))
    runner = sched.runner
    runner.decode_kernel = True
    runner._capture()
    replays = {b: 0 for b in runner.graphs}
    for b, g in runner.graphs.items():
        run = g.replay

        def counted(b=b, run=run):
            replays[b] += 1
            run()

        g.replay = counted
    mixed = []
    forward = runner.forward

    def spy(rows):
        before = runner.forwards
        out = forward(rows)
        if any(n == 1 for _, n in rows) and any(n > 1 for _, n in rows):
            mixed.append(runner.forwards - before)
        return out

    runner.forward = spy
    prompts = _prompts(7, lo=20, hi=40)  # chunks of 24 tokens: prompts take several steps
    opens = [_open(tiny, p, max_new=10, mode="spa", wire_layers=[0, 2]) for p in prompts]
    sched.handle(opens[0])
    for m in opens[1:]:  # one arrives per step: most steps mix decodes with a prefill chunk
        sched.step()
        sched.handle(m)
    _drain(sched)
    assert len(mixed) >= 4 and set(mixed) == {2}, mixed  # graph replay + eager pass
    assert sum(replays.values()) >= len(mixed)
    ref = ReferenceGenerator(tiny, None)
    for m, p in zip(opens, prompts, strict=True):
        assert _generated(sched, m) == ref.generate(p, 10, "base", stop_at_eos=False).tokens
    s = sched.sessions[opens[3].session]
    out = tiny.forward(torch.tensor([s.seq[:-1]]))
    for pos, (hid,) in s.ring.items():  # hidden states of mixed steps land on the right rows
        want = torch.stack([out.hidden[i][0, pos - 1] for i in (0, 2)]).half()
        assert (hid.float() - want.float()).abs().max() < 1e-2


def test_worker_sends_a_step_in_one_batch_when_the_broker_takes_them(tiny):
    """The compute thread hands each step's FRAMEs to the link thread at once; when the broker's
    beats say it takes BATCHes, they leave in one send (every part a valid message), otherwise
    one by one."""
    import threading
    import time

    import zmq

    from cloud_worker.worker import Worker
    from routing.batch import split_batch
    from routing.protocol import MsgType, decode, encode

    ctx = zmq.Context.instance()
    broker = ctx.socket(zmq.ROUTER)
    broker.setsockopt(zmq.LINGER, 0)
    port = broker.bind_to_random_port("tcp://127.0.0.1")
    w = Worker(tiny, f"tcp://127.0.0.1:{port}",
               config=WorkerConfig(heartbeat_s=0.05, liveness=40, block_size=8, cpu_kv_mb=16))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    ident, *frames = broker.recv_multipart()
    assert decode(frames, tensors=False).type is MsgType.READY

    def serve(n_sessions: int, beat: dict) -> tuple[int, int, dict]:
        """Open n sessions of 5 tokens; -> (sends carrying FRAMEs, BATCH sends, frames by session)."""
        broker.send_multipart([ident, *encode(msg("HEARTBEAT", broker=b"B" * 8, **beat))])
        opens = [_open(tiny, p, max_new=5, window=5) for p in _prompts(n_sessions, seed=21)]
        for m in opens:
            broker.send_multipart([ident, *encode(m)])
        got: dict = {m.session: [] for m in opens}
        sends = batches = 0
        end, next_beat = time.monotonic() + 120, 0.0
        while sum(map(len, got.values())) < 5 * n_sessions and time.monotonic() < end:
            if time.monotonic() >= next_beat:
                broker.send_multipart([ident, *encode(msg("HEARTBEAT", broker=b"B" * 8, **beat))])
                next_beat = time.monotonic() + 0.05
            if not broker.poll(20):
                continue
            _, *frames = broker.recv_multipart()
            m = decode(frames)
            parts = split_batch(m, frames) if m.type is MsgType.BATCH else [frames]
            batches += m.type is MsgType.BATCH
            frames_in = [decode(p) for p in parts if decode(p, tensors=False).type is MsgType.FRAME]
            sends += bool(frames_in)
            for f in frames_in:
                got[f.session].append(f["pos"])
        return sends, batches, got

    try:
        sends, batches, got = serve(4, {"batches": 64})
        assert all(pos == list(range(pos[0], pos[0] + 5)) for pos in got.values()), got
        assert batches >= 1 and sends < 20  # 20 frames in fewer sends: one per step
        sends, batches, got = serve(2, {})  # a broker that takes none: one message a send
        assert batches == 0 and sends == 10 and all(len(p) == 5 for p in got.values())
    finally:
        w.running = False
        t.join(timeout=5)
        w.close()
        broker.close(0)
