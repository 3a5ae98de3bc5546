import argparse
import sys

import torch

sys.path.insert(0, "/work/main")
sys.path.insert(0, "/work/main/benchmarks")
from blend_quality import cpu_setup
from blend_segments import _per_record, segment_labels, segment_stats

from edge_agent.edge_model import EdgeModel
from lab.blend import blend, blended_network, train_config
from lab.blend_tune import copied_positions, layout
from lab.pool import STYLES, corpus_file, style_records, xsum_file
from lab.training import extract_features

pool_dir, users = sys.argv[1], sys.argv[2].split(",")
args = argparse.Namespace(
    backbone="smollm2-135m", pool=pool_dir, threads=2, examples=16, smoke=False
)
bb, pool, cfg = cpu_setup(args)
tok = bb.tokenizer
lm = EdgeModel.for_backbone(bb).cpu().lm_head
for u in users:
    recs = style_records(
        STYLES[u], 300 + 96, tok, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file()
    )
    train, test = recs[:300], recs[300:]
    tcfg = train_config(cfg)
    f = extract_features(bb, test, pool.side_cfg, tcfg, progress=False)
    labels = [
        s
        for fl in _per_record(
            copied_positions(test, tok, tcfg).tolist(), [len(a) for _, a in layout(test, tok, tcfg)]
        )
        for s in segment_labels(fl)
    ]
    print(u, "backbone", segment_stats(lm, f, None, labels), flush=True)
    K = len(pool.names)
    for i, n in enumerate(["theta0"] + pool.names):
        w = torch.zeros(K)
        if i:
            w[i - 1] = 1
        print(u, n, segment_stats(lm, f, blended_network(pool, w), labels), flush=True)
    edge, rec = blend(bb, pool, train, cfg.replace(tune_steps=0))
    print(
        u,
        "pure blend",
        rec["blend"]["coefficients"],
        segment_stats(lm, f, edge.heads["add"].side.eval(), labels),
        flush=True,
    )
    edge, rec = blend(bb, pool, train, cfg)
    print(u, "default", segment_stats(lm, f, edge.heads["add"].side.eval(), labels), flush=True)
