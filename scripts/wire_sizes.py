"""Bundle + kit sizes on disk of a SmolLM2 user stored fp32 and int8 (RESULTS.md §13.2).

    nice -n 10 python scripts/wire_sizes.py [MODELS_DIR (default ~/.cache/spa/compose-models)] [OUT]
"""

import shutil
import sys
import time
from pathlib import Path

import torch

from cloud_worker.backbone import Backbone
from edge_agent.bundle import _size, load_bundle, save_bundle
from routing import quant

torch.set_num_threads(1)
root = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/spa/compose-models")
users = sorted(p for p in (root / "users").iterdir() if (p / "bundle.json").is_file())
src = users[0]
edge = load_bundle(src)
t = time.time()
bb = Backbone.load(str(root / "backbone"))
edge.grid = quant.calibrate(bb)
print(f"calibrated grid {tuple(edge.grid.shape)} in {time.time()-t:.1f}s")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/wire_sizes")
shutil.rmtree(out, ignore_errors=True)
for w in ("fp32", "int8"):
    b = save_bundle(edge, out / w / "bundle", kits=out / w / "kits", weights=w)
    kit = next((out / w / "kits").iterdir())
    print(f"{w}: bundle {_size(b)/1e6:.2f} MB, kit {_size(kit)/1e6:.2f} MB "
          f"(lm_head {(kit/'lm_head.safetensors').stat().st_size/1e6:.2f}, grid {(kit/'wire_grid.safetensors').stat().st_size/1e3:.1f} kB, "
          f"tokenizer {_size(kit/'tokenizer')/1e6:.2f}), total {(_size(b)+_size(kit))/1e6:.2f} MB; source bundle {src.name}: {_size(src)/1e6:.2f} MB")
e8 = load_bundle(out / "int8" / "bundle", resident="int8")
def mem(e):
    n = 0
    for h in e.heads.values():
        for m in (h.side, h.classifier):
            n += sum(b.numel()*b.element_size() for b in list(m.parameters()) + list(m.buffers()))
    return n
e32 = load_bundle(out / "int8" / "bundle")
print(f"resident private weights: fp32 {mem(e32)/1e6:.2f} MB, int8 {mem(e8)/1e6:.2f} MB")
