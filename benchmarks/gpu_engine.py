"""The cloud worker's engine against HF `generate` and the memory-bandwidth floor, one run.

A 7B-shaped Llama (Llama-2-7B: 32 layers, d = 4096, 32 heads, ffn 11008, vocab 32000) with
random bf16 weights, built from a LlamaConfig (nothing downloaded). For prompts of 128 and 1024
tokens and batches 1, 16, 64, 256: the project's `Scheduler` driven directly with OPEN messages
(ms per decode step, tokens/s), HF `generate` on the same model in the same process, and the
floor = (weight bytes + KV bytes read per step) / measured device copy bandwidth. In spa mode
(all 32 layers on the wire, kept in the device ring) the share of the step that hidden-state
handling costs. Plus: bf16 batched greedy agreement with single-sequence HF greedy, and z of the
engine (CUDA graphs) against an HF forward over the same tokens.

`--shape smollm2` swaps in SmolLM2-135M's shape (30 layers, d = 576, GQA 9/3, vocab 49152): the
small model whose KV budget on an H200 allows batches far beyond 256 (`--batches 256,512,1024
--graph-max 512`: graphs up to 512, 1024 eager). Also checks the Triton paged-decode kernel
(plain and split-K) against the PyTorch reference.

    python3 benchmarks/gpu_engine.py [--steps 32] [--shape 7b|smollm2|tiny] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cloud_worker.backbone import Backbone  # noqa: E402
from cloud_worker.config import WorkerConfig  # noqa: E402
from cloud_worker.scheduler import Scheduler  # noqa: E402
from routing.protocol import msg  # noqa: E402


def build(shape: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = shape == "tiny"
    if tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    elif shape == "smollm2":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          tie_word_embeddings=True, rope_theta=100000.0)
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # random weights: never stop, never suppress EOS
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a device-to-device copy (median of 10)."""
    n = (1 << 30) if device.startswith("cuda") else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        sync(device)
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        times.append(time.perf_counter() - t)
    del a, b
    return 2 * n / sorted(times[2:])[5]


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every weight but the embedding table (one row per token)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not emb) + (
        emb.element_size() * emb.shape[1] if model.config.tie_word_embeddings else 0)


def hf_ms_per_step(model, B: int, P: int, steps: int, device: str) -> float:
    ids = torch.randint(1, model.config.vocab_size, (B, P), device=device)
    mask = torch.ones_like(ids)

    def gen(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
        sync(device)
        return time.perf_counter() - t

    gen(2)  # warm-up
    return (gen(steps + 1) - gen(1)) / steps * 1e3


def open_msg(bb, prompt, max_new, mode="base", wire=()):
    return msg("OPEN", session=os.urandom(16), prompt=prompt, max_new_tokens=max_new, mode=mode,
               window=min(256, max_new), sampling={}, fingerprint=bb.fingerprint, wire_layers=list(wire),
               eos=None)


def engine_ms_per_step(sched, B: int, P: int, steps: int, mode: str, vocab: int) -> tuple[float, int]:
    """Open B sessions, prefill, then time `steps` decode steps (schedule → run → postprocess)."""
    bb = sched.backbone
    wire = range(bb.n_layers) if mode == "spa" else ()
    opens = [open_msg(bb, torch.randint(1, vocab, (P,)).tolist(), steps + 8, mode, wire) for _ in range(B)]
    for m in opens:
        sched.handle(m)
    seen: set[bytes] = set()
    while len(seen) < B:  # prefill (chunked) until every session has its first frame
        seen |= {f.session for f in sched.step()}
    for _ in range(3):  # warm-up decodes
        sched.step()
    sync(str(bb.device))
    t = time.perf_counter()
    for _ in range(steps):
        sched.step()
    ms = (time.perf_counter() - t) / steps * 1e3
    ctx = sum(s.kv_len for s in sched.sessions.values()) // max(1, len(sched.sessions))
    for m in opens:
        sched.close(m.session)
    return ms, ctx


def agreement(model, sched, n: int, P: int, T: int, device: str) -> dict:
    """Engine batched greedy (n sessions at once) vs single-sequence HF greedy, and engine z vs
    an HF forward over the engine's own tokens (teacher forcing)."""
    bb = sched.backbone
    prompts = [torch.randint(1, model.config.vocab_size, (P,)).tolist() for _ in range(n)]
    opens = [open_msg(bb, p, T) for p in prompts]
    for m in opens:
        sched.handle(m)
    zs: dict[bytes, list] = {m.session: [] for m in opens}
    while sched.has_work():
        for f in sched.step():
            zs[f.session].append(torch.from_numpy(f.tensors[0].astype("float32")))
    equal = total = 0
    first_div, zerr, gaps_all, gaps_div = [], [], [], []
    for m, p in zip(opens, prompts, strict=True):
        s = sched.sessions[m.session]
        mine = s.seq[P:]
        ref = model.generate(torch.tensor([p], device=device), max_new_tokens=T, do_sample=False)[0, P:].tolist()
        k = next((i for i, (a, b) in enumerate(zip(mine, ref, strict=True)) if a != b), T)
        first_div.append(k)
        with torch.inference_mode():  # HF's own top-1/top-2 margin along its greedy sequence
            lg = bb.forward(torch.tensor([p + ref[:-1]], device=device)).logits[0, P - 1 :].float()
        top2 = lg.topk(2, dim=-1).values
        gap = (top2[:, 0] - top2[:, 1]) / lg.std(dim=-1)  # (T,) in units of the logits' spread
        gaps_all.extend(gap.tolist())
        if k < T:
            gaps_div.append(float(gap[k]))
        equal += sum(a == b for a, b in zip(mine, ref, strict=True))
        total += T
        with torch.inference_mode():
            out = bb.forward(torch.tensor([s.seq[:-1]], device=device))
        z_ref = out.z[0, P - 1 :].float().cpu()  # (T, d) states that predicted each new token
        z_eng = torch.stack(zs[m.session])
        zerr.append(float(((z_eng - z_ref).norm(dim=-1) / z_ref.norm(dim=-1)).max()))
        sched.close(m.session)
    med = sorted(gaps_all)[len(gaps_all) // 2]
    return {"tokens_equal": equal / total, "first_divergence": first_div, "z_rel_err_max": max(zerr),
            "top2_gap_at_divergence": sorted(gaps_div), "top2_gap_median": med}


def fairness(sched, n: int, rows: int, P: int, steps: int, vocab: int) -> dict:
    """n sessions, `rows` per step (n/rows x oversubscribed): every session advances, the longest
    wait for a turn, tokens/s."""
    bb = sched.backbone
    keep = sched.config
    sched.config = keep.replace(max_batch=rows)
    opens = [open_msg(bb, torch.randint(1, vocab, (P,)).tolist(), 64) for _ in range(n)]
    for m in opens:
        sched.handle(m)
    sched.longest_wait_steps, sched.longest_wait_s = 0, 0.0
    t = time.perf_counter()
    frames = sum(len(sched.step()) for _ in range(steps))
    dt = time.perf_counter() - t
    gen = [sched.sessions[m.session].generated for m in opens]
    for m in opens:
        sched.close(m.session)
    sched.config = keep
    return {"sessions": n, "rows": rows, "steps": steps, "min_generated": min(gen),
            "max_generated": max(gen), "longest_wait_steps": sched.longest_wait_steps,
            "longest_wait_ms": sched.longest_wait_s * 1e3, "tok_s": frames / dt}


def kernel_check(device: str) -> float | None:
    """The Triton paged-decode kernel (plain and split-K) against the PyTorch reference: the
    largest absolute difference, None off cuda."""
    from cloud_worker import attention

    if device != "cuda" or not attention.paged_decode_available(64):
        return None
    torch.manual_seed(0)
    worst = 0.0
    for H, Hkv, D, B in [(4, 2, 32, 3), (8, 8, 64, 3), (9, 3, 64, 1), (9, 3, 64, 300)]:
        bs = 16
        kc, vc = torch.randn(64 * bs, Hkv, D, device=device), torch.randn(64 * bs, Hkv, D, device=device)
        bt = torch.randint(1, 64, (B, 12), dtype=torch.int32, device=device)
        lens = torch.randint(1, 12 * bs, (B,), dtype=torch.int32, device=device)
        q = torch.randn(B, H, D, device=device)
        got = attention.paged_decode(q, kc, vc, bt, lens, D**-0.5, bs)
        want = attention.decode_reference(q.cpu(), kc.cpu(), vc.cpu(), bt.cpu(), lens.cpu(), bs, D**-0.5)
        worst = max(worst, float((got.cpu() - want).abs().max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--shape", choices=("7b", "smollm2", "tiny"), default="7b")
    ap.add_argument("--tiny", action="store_true", help="--shape tiny: small fp32 model (CPU run)")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--prompts", default="128,1024")
    ap.add_argument("--graph-max", type=int, default=0, help="largest CUDA graph batch (0: the largest batch)")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true", help="seconds on a CPU: tiny model, small batches")
    a = ap.parse_args()
    if a.smoke:
        a.shape, a.steps, a.batches, a.prompts, a.no_hf = "tiny", 4, "1,4", "16", True
    a.tiny = a.tiny or a.shape == "tiny"
    a.shape = "tiny" if a.tiny else a.shape
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [int(x) for x in a.batches.split(",")]
    prompts = [int(x) for x in a.prompts.split(",")]
    res: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                 "torch": torch.__version__, "steps": a.steps, "rows": []}
    t0 = time.perf_counter()
    model = build(a.shape, device)
    V = model.config.vocab_size
    bw = copy_bandwidth(device)
    wb = weight_bytes(model)
    kv_tok = 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * (
        model.config.hidden_size // model.config.num_attention_heads) * (4 if a.tiny else 2)
    res.update(copy_bw_GBps=bw / 1e9, weight_GB=wb / 1e9, kv_bytes_per_token=kv_tok)
    print(f"model built in {time.perf_counter() - t0:.1f}s; copy bandwidth {bw / 1e9:.0f} GB/s; "
          f"weights {wb / 1e9:.2f} GB; KV {kv_tok / 1024:.0f} KiB/token", flush=True)
    res["kernel_max_abs_err"] = kernel_check(device)
    print(f"Triton paged decode vs reference: max |diff| {res['kernel_max_abs_err']}", flush=True)
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else 1 << 40
    hf: dict = {}
    if not a.no_hf:
        for P in prompts:
            for B in batches:
                need = B * (P + a.steps + 2) * kv_tok * 1.3 + B * P * model.config.intermediate_size * 8
                if need > free - (4 << 30):
                    hf[(P, B)] = None
                    print(f"HF generate P={P} B={B}: does not fit", flush=True)
                    continue
                hf[(P, B)] = hf_ms_per_step(model, B, P, a.steps, device)
                print(f"HF generate P={P} B={B}: {hf[(P, B)]:.1f} ms/step", flush=True)
                gc.collect()
                torch.cuda.empty_cache() if device == "cuda" else None
    bb = Backbone(model, None)
    bb.__dict__["fingerprint"] = "bench"  # skip hashing 13 GB of weights
    t = time.perf_counter()
    cfg = WorkerConfig(max_batch=max(batches), chunk_tokens=max(8192, max(batches)),
                       graph_max_batch=a.graph_max or max(batches), cpu_kv_mb=4096)
    sched = Scheduler(bb, config=cfg)
    cap = sched.blocks.capacity_tokens
    res["engine_setup_s"] = time.perf_counter() - t
    res["kv_capacity_tokens"] = cap
    res["capacity_sessions"] = sched.capacity  # what READY would announce
    res["graphs"] = sorted(sched.runner.graphs)
    print(f"engine ready in {res['engine_setup_s']:.1f}s: KV {cap} tokens (capacity {sched.capacity} "
          f"sessions of {cfg.session_tokens} tokens), graphs {res['graphs']}", flush=True)
    try:
        res["agreement"] = (agreement(model, sched, 2, 16, 4, device) if a.smoke
                            else agreement(model, sched, 8, 128 if not a.tiny else 16, 32, device))
        print("agreement", res["agreement"], flush=True)
    except Exception:  # report and go on: the timings are worth having
        traceback.print_exc()
        for sid in list(sched.sessions):
            sched.close(sid)
    try:
        res["fairness"] = (fairness(sched, 16, 4, 16, 8, V) if a.smoke
                           else fairness(sched, 4 * 64, 64, 128, 4 * a.steps, V))
        print("fairness", res["fairness"], flush=True)
    except Exception:
        traceback.print_exc()
        for sid in list(sched.sessions):
            sched.close(sid)
    for P in prompts:
        for B in batches:
            if B * (P + a.steps + 8) > cap:
                res["rows"].append({"P": P, "B": B, "fits": False})
                print(f"engine P={P} B={B}: over the KV budget ({cap} tokens)", flush=True)
                continue
            try:
                ms, ctx = engine_ms_per_step(sched, B, P, a.steps, "base", V)
                row = {"P": P, "B": B, "fits": True, "ms": ms, "tok_s": B / ms * 1e3, "ctx": ctx,
                       "graph": bool(sched.runner.graphs) and B <= max(sched.runner.graphs)}
                floor = (wb + B * (ctx - a.steps / 2) * kv_tok) / bw * 1e3  # mean context, timed steps
                row["floor_ms"] = floor
                if P == min(prompts):
                    row["spa_ms"], _ = engine_ms_per_step(sched, B, P, a.steps, "spa", V)
                    row["hidden_share"] = max(0.0, 1 - ms / row["spa_ms"])
            except Exception:
                traceback.print_exc()
                for sid in list(sched.sessions):
                    sched.close(sid)
                continue
            h = hf.get((P, B))
            if h:
                row["hf_ms"], row["hf_tok_s"] = h, B / h * 1e3
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    print("\n| prompt | batch | graph | engine ms/step | × floor | engine tok/s | HF generate ms/step | HF tok/s "
          "| engine / HF | spa mode ms/step | hidden-state share |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        if not r["fits"]:
            print(f"| {r['P']} | {r['B']} | | over KV budget | | | | | | | |")
            continue
        hf_cols = (f"{r['hf_ms']:.1f} | {r['hf_tok_s']:.0f} | {r['tok_s'] / r['hf_tok_s']:.1f}×"
                   if "hf_ms" in r else f"{'not run' if a.no_hf else 'does not fit'} | | ")
        spa = (f"{r['spa_ms']:.2f} | {100 * r['hidden_share']:.1f}%" if "spa_ms" in r else " | ")
        print(f"| {r['P']} | {r['B']} | {'yes' if r['graph'] else 'eager'} | {r['ms']:.2f} | {r['ms'] / r['floor_ms']:.2f}× (floor "
              f"{r['floor_ms']:.2f}) | {r['tok_s']:.0f} | {hf_cols} | {spa} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
