"""The edge bundle: the directory of one user's private parts.

    bundle.json          format, backbone fingerprint (which names the edge kit), per head:
                         side config, τ, how trained
    weights.safetensors  <combine>.side.*, <combine>.classifier.* (float32, or 2-D weights int8
                         with per-channel scales: edge_agent/weights.py)

The public parts (the lm_head copy and the tokenizer) belong to the backbone, not to the user:
they live once per backbone in its edge kit (edge_agent/kit.py), by default in `kits/` beside
the bundle. Loading against a different backbone is refused with both fingerprints named; a
missing kit is refused naming where it was looked for. Format 1 bundles (lm_head and tokenizer
inside) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import skip_init

from edge_agent.edge_model import EdgeModel, Head
from edge_agent.kit import kit_id, load_kit, save_kit
from edge_agent.ladder import build_side
from edge_agent.side_network import Classifier, SideConfig
from edge_agent.weights import RESIDENT, keep_int8, pack, unpack
from routing.errors import FingerprintMismatch, InputError

FORMAT = "spa-edge-bundle/2"
FORMAT_V1 = "spa-edge-bundle/1"  # lm_head + tokenizer inside every bundle
MAX_LEAD = 16  # a head's lead tokens (edge_model.Head.lead)
MAX_FOLLOW = 4  # a head's follow tokens (edge_model.Head.follow)
MAX_COPY = 8  # a head's copy run (edge_model.Head.copy)


def save_bundle(edge: EdgeModel, out: str | Path, record: dict | None = None,
                kits: str | Path | None = None, weights: str = "fp32") -> Path:
    """Write the private parts to `out` and, unless it is there, the backbone's edge kit under
    `kits` (default: `kits/` beside `out`). weights "int8": 2-D weights (and a new kit's lm_head)
    stored as int8 codes + per-channel scales (edge_agent/weights.py)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_kit(edge, Path(kits) if kits is not None else out.parent / "kits", weights)
    state, heads = {}, {}
    for combine, head in edge.heads.items():
        for k, v in head.side.state_dict().items():
            state[f"{combine}.side.{k}"] = v
        for k, v in head.classifier.state_dict().items():
            state[f"{combine}.classifier.{k}"] = v
    tensors = pack(state, weights)
    for combine, head in edge.heads.items():
        heads[combine] = {"side": head.side.cfg.to_dict(), "classifier": head.classifier.cfg,
                          "threshold": head.threshold, "lead": head.lead, "follow": head.follow,
                          "copy": head.copy,
                          "tau": head.tau, "info": head.info}
    save_file(tensors, str(out / "weights.safetensors"))
    meta = {
        "format": FORMAT,
        "backbone_fingerprint": edge.fingerprint,
        "kit": kit_id(edge.fingerprint),
        "n_layers": edge.n_layers,
        "d_model": edge.d_model,
        "vocab_size": edge.lm_head.out_features,
        "eos_token_id": edge.eos_token_id,
        "heads": heads,
        "record": record or {},
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    for stale in ("tokenizer",):  # a format-1 bundle rewritten in place: drop its public copy
        if (out / stale).is_dir():
            import shutil

            shutil.rmtree(out / stale)
    return out


def describe(path: str | Path, kits: str | Path | None = None) -> str:
    """One line: the bundle's size on disk and its (shared) edge kit's."""
    from edge_agent.kit import find_kit

    path = Path(path)
    fp = json.loads((path / "bundle.json").read_text())["backbone_fingerprint"]
    kit = find_kit(fp, path, kits)
    return (f"bundle {path}: {_size(path) / 1e6:.2f} MB private; edge kit {kit}: "
            f"{_size(kit) / 1e6:.1f} MB, shared by every bundle of backbone {fp[:12]}…")


def load_bundle(path: str | Path, expected_fingerprint: str | None = None,
                kits: str | Path | None = None, resident: str = "fp32") -> EdgeModel:
    """Load a bundle and its backbone's edge kit (looked for in `kits`, then as `find_kit`
    says); with `expected_fingerprint`, refuse one built for another backbone. resident "int8":
    an int8-stored bundle keeps its Linear weights int8 in memory (same numbers, less memory)."""
    if resident not in RESIDENT:
        raise InputError(f"unknown resident weights {resident!r}: expected one of {', '.join(RESIDENT)}")
    path = Path(path)
    meta_file = path / "bundle.json"
    if not path.is_dir():
        raise InputError(f"bundle directory {path} does not exist")
    if not meta_file.is_file() or not (path / "weights.safetensors").is_file():
        raise InputError(f"{path} is not an edge bundle (bundle.json or weights.safetensors missing)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {meta_file}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_V1):
        got = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{meta_file}: unknown format {got!r}, expected {FORMAT}")
    fp = meta.get("backbone_fingerprint")
    if not isinstance(fp, str) or not fp:
        raise InputError(f"{meta_file}: no backbone_fingerprint")
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise FingerprintMismatch(fp, expected_fingerprint, what=f"bundle {path}")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot read {path / 'weights.safetensors'}: {exc}") from None

    if meta["format"] == FORMAT_V1:
        lm_head, tokenizer = _v1_public_parts(path, tensors)
    else:
        kit = load_kit(fp, path, kits)
        lm_head, tokenizer = kit.lm_head, kit.tokenizer
        if kit.d_model != meta["d_model"] or kit.n_layers != meta["n_layers"]:
            raise InputError(f"bundle {path} and its edge kit {kit.path} disagree on the backbone shape")
    edge = EdgeModel(lm_head, fp, meta["n_layers"], tokenizer, meta.get("eos_token_id"))
    edge.grid = None if meta["format"] == FORMAT_V1 else kit.grid
    stored = tensors
    try:
        tensors = unpack(stored)
        for combine, h in meta["heads"].items():
            side = build_side(SideConfig(**h["side"]))
            side.load_state_dict(_sub(tensors, f"{combine}.side."))
            clf = Classifier(meta["d_model"], **h.get("classifier", {}))
            clf.load_state_dict(_sub(tensors, f"{combine}.classifier."))
            if resident == "int8":
                keep_int8(side, stored, f"{combine}.side.")
                keep_int8(clf, stored, f"{combine}.classifier.")
            lead, follow, copy = h.get("lead", 0), h.get("follow", 0), h.get("copy", 0)
            for name, value, top in (("lead", lead, MAX_LEAD), ("follow", follow, MAX_FOLLOW),
                                     ("copy", copy, MAX_COPY)):
                if type(value) is not int or not 0 <= value <= top:
                    raise InputError(f"bundle {path}: head {combine}: {name} must be an integer "
                                     f"in [0, {top}], got {value!r}")
            edge.set_head(Head(combine, side.eval(), clf.eval(), float(h["threshold"]),
                               h.get("info", {}), lead, follow, copy))
    except (KeyError, TypeError, RuntimeError) as exc:  # a head's weights or config damaged
        raise InputError(f"bundle {path}: bad head: {type(exc).__name__}: {exc}") from None
    edge.record = meta.get("record", {})
    return edge.eval()


def _v1_public_parts(path: Path, tensors: dict) -> tuple[nn.Linear, object]:
    w = tensors["lm_head.weight"]
    lm_head = skip_init(nn.Linear, w.shape[1], w.shape[0], bias="lm_head.bias" in tensors)
    lm_head.load_state_dict(_sub(tensors, "lm_head."))
    tokenizer = None
    if (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    return lm_head, tokenizer


def _sub(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
