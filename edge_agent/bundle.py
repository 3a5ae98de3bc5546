"""The edge bundle: a directory a device keeps.

    bundle.json          format, backbone fingerprint, per head: side config, τ, how trained
    weights.safetensors  lm_head.weight, <combine>.side.*, <combine>.classifier.*
    tokenizer/           the backbone's tokenizer (public)

Loading against a different backbone is refused with both fingerprints named.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from edge_agent.edge_model import EdgeModel, Head
from edge_agent.side_network import Classifier, SideConfig, SideNetwork
from routing.errors import FingerprintMismatch, InputError

FORMAT = "spa-edge-bundle/1"


def save_bundle(edge: EdgeModel, out: str | Path, record: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"lm_head.{k}": v.contiguous() for k, v in edge.lm_head.state_dict().items()}
    heads = {}
    for combine, head in edge.heads.items():
        for k, v in head.side.state_dict().items():
            tensors[f"{combine}.side.{k}"] = v.detach().contiguous()
        for k, v in head.classifier.state_dict().items():
            tensors[f"{combine}.classifier.{k}"] = v.detach().contiguous()
        heads[combine] = {"side": head.side.cfg.to_dict(), "classifier": head.classifier.cfg,
                          "threshold": head.threshold,
                          "tau": head.tau, "info": head.info}
    save_file(tensors, str(out / "weights.safetensors"))
    meta = {
        "format": FORMAT,
        "backbone_fingerprint": edge.fingerprint,
        "n_layers": edge.n_layers,
        "d_model": edge.d_model,
        "vocab_size": edge.lm_head.out_features,
        "eos_token_id": edge.eos_token_id,
        "heads": heads,
        "record": record or {},
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    if edge.tokenizer is not None:
        edge.tokenizer.save_pretrained(str(out / "tokenizer"))
    return out


def load_bundle(path: str | Path, expected_fingerprint: str | None = None) -> EdgeModel:
    """Load a bundle; with `expected_fingerprint`, refuse one built for another backbone."""
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
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_file}: unknown format {meta.get('format')!r}, expected {FORMAT}")
    fp = meta["backbone_fingerprint"]
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise FingerprintMismatch(fp, expected_fingerprint, what=f"bundle {path}")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot read {path / 'weights.safetensors'}: {exc}") from None

    w = tensors["lm_head.weight"]
    lm_head = nn.Linear(w.shape[1], w.shape[0], bias="lm_head.bias" in tensors)
    lm_head.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("lm_head.")})
    tokenizer = None
    if (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    edge = EdgeModel(lm_head, fp, meta["n_layers"], tokenizer, meta.get("eos_token_id"))
    for combine, h in meta["heads"].items():
        side = SideNetwork(SideConfig(**h["side"]))
        side.load_state_dict(_sub(tensors, f"{combine}.side."))
        clf = Classifier(meta["d_model"], **h.get("classifier", {}))
        clf.load_state_dict(_sub(tensors, f"{combine}.classifier."))
        edge.set_head(Head(combine, side.eval(), clf.eval(), float(h["threshold"]), h.get("info", {})))
    edge.record = meta.get("record", {})
    return edge.eval()


def _sub(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
