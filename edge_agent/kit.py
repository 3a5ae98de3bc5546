"""The edge kit: the public edge pieces of one backbone, stored once and shared by every user's
bundle of that backbone (DESIGN.md §3: "a device keeps the public edge kit of its backbone once").

    kits/<fingerprint[:16]>/
        kit.json              format, the backbone's full fingerprint, n_layers, d_model, vocab, eos
        lm_head.safetensors   the lm_head copy (fp32, or int8 + per-row scales: edge_agent/weights.py;
                              dequantised to fp32 at load: the edge arithmetic is fp32)
        wire_grid.safetensors the per-channel grid (L+1, d) of quantised frames (routing/quant.py),
                              calibrated once on public text; absent in older kits (fp16 only)
        tokenizer/            the backbone's tokenizer

A bundle names its kit by the backbone fingerprint. `find_kit` looks, in order, in the
directory given to it, $SPA_KITS, `kits/` beside the bundle and one level up, and the cache
($SPA_CACHE/kits); a missing kit is a one-line error listing where it looked. Loaded kits are
memoised per process, so a process serving many users holds one lm_head per backbone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils import skip_init

from edge_agent.weights import pack, unpack
from routing.cache import cache_root
from routing.errors import FingerprintMismatch, InputError

FORMAT = "spa-edge-kit/1"


@dataclass
class EdgeKit:
    path: Path
    fingerprint: str
    lm_head: nn.Linear  # (V, d), fp32, frozen
    tokenizer: object | None
    n_layers: int
    d_model: int
    eos_token_id: int | None
    grid: Tensor | None = None  # (L+1, d) float32: int8/int4 frames' per-channel scales


def kit_id(fingerprint: str) -> str:
    return fingerprint[:16]


def save_kit(edge, root: str | Path, weights: str = "fp32") -> Path:
    """Write `edge`'s lm_head and tokenizer as the kit of its backbone under `root`, unless that
    kit is there already (then it is checked, not rewritten). Returns the kit directory."""
    root = Path(root)
    out = root / kit_id(edge.fingerprint)
    if (out / "kit.json").is_file():
        meta = _read_meta(out)
        if meta.get("backbone_fingerprint") != edge.fingerprint:
            raise FingerprintMismatch(str(meta.get("backbone_fingerprint")), edge.fingerprint,
                                      what=f"edge kit {out}")
        if getattr(edge, "grid", None) is not None and not (out / GRID_FILE).is_file():
            _save_grid(edge.grid, out)  # a kit made before quantised frames: add its grid
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kit-", dir=root))
    try:
        save_file(pack(edge.lm_head.state_dict(), weights), str(tmp / "lm_head.safetensors"))
        if getattr(edge, "grid", None) is not None:
            _save_grid(edge.grid, tmp)
        if edge.tokenizer is not None:
            edge.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "kit.json").write_text(json.dumps({
            "format": FORMAT, "backbone_fingerprint": edge.fingerprint, "n_layers": edge.n_layers,
            "d_model": edge.d_model, "vocab_size": edge.lm_head.out_features,
            "eos_token_id": edge.eos_token_id}, indent=2))
        tmp.chmod(0o755)
        try:
            os.replace(tmp, out)
        except OSError:  # written by another process meanwhile
            if not (out / "kit.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def kit_places(fingerprint: str, bundle: Path | None = None,
               kits: str | Path | None = None) -> list[Path]:
    """Where the kit of `fingerprint` may be, in search order."""
    kid = kit_id(fingerprint)
    roots: list[Path] = []
    if kits is not None:
        kits = Path(kits)
        if (kits / "kit.json").is_file():
            return [kits]  # the kit directory itself
        roots.append(kits)
    if os.environ.get("SPA_KITS"):
        roots.append(Path(os.environ["SPA_KITS"]).expanduser())
    if bundle is not None:
        roots += [bundle.parent / "kits", bundle.parent.parent / "kits"]
    roots.append(cache_root() / "kits")
    return [r / kid for r in roots]


def find_kit(fingerprint: str, bundle: Path | None = None, kits: str | Path | None = None) -> Path:
    places = kit_places(fingerprint, bundle, kits)
    for place in places:
        if (place / "kit.json").is_file():
            return place
    what = f"bundle {bundle}" if bundle is not None else "this bundle"
    raise InputError(
        f"{what} needs the edge kit of backbone {fingerprint[:16]}… (lm_head + tokenizer), "
        f"not found in: {', '.join(str(p) for p in places)}; copy that kits/ directory beside "
        f"the bundle, set SPA_KITS, or rebuild it with `spa train`/`spa build-models`")


_LOADED: dict[tuple[str, str], EdgeKit] = {}


def load_kit(fingerprint: str, bundle: Path | None = None,
             kits: str | Path | None = None) -> EdgeKit:
    """The kit of `fingerprint` (memoised: bundles of one backbone share one lm_head)."""
    path = find_kit(fingerprint, bundle, kits)
    key = (str(path.resolve()), fingerprint, (path / GRID_FILE).is_file())  # a grid added later: reloaded
    if key in _LOADED:
        return _LOADED[key]
    meta = _read_meta(path)
    if meta.get("format") != FORMAT:
        raise InputError(f"{path / 'kit.json'}: unknown format {meta.get('format')!r}, expected {FORMAT}")
    if meta.get("backbone_fingerprint") != fingerprint:
        raise FingerprintMismatch(str(meta.get("backbone_fingerprint")), fingerprint, what=f"edge kit {path}")
    try:
        tensors = unpack(load_file(str(path / "lm_head.safetensors")))
        w = tensors["weight"]  # (V, d)
        lm_head = skip_init(nn.Linear, w.shape[1], w.shape[0], bias="bias" in tensors)  # no random init
        lm_head.load_state_dict(tensors)
    except Exception as exc:  # safetensors' own errors for damaged files; a missing key
        raise InputError(f"cannot read the edge kit {path}: {type(exc).__name__}: {exc}") from None
    if (lm_head.in_features, lm_head.out_features) != (meta["d_model"], meta["vocab_size"]):
        raise InputError(f"edge kit {path}: lm_head shape disagrees with kit.json")
    grid = None
    if (path / GRID_FILE).is_file():
        try:
            grid = load_file(str(path / GRID_FILE))["grid"].float()
        except Exception as exc:  # a damaged file
            raise InputError(f"cannot read {path / GRID_FILE}: {type(exc).__name__}: {exc}") from None
        if tuple(grid.shape) != (meta["n_layers"] + 1, meta["d_model"]) or not bool(
                (grid > 0).all() and grid.isfinite().all()):
            raise InputError(f"edge kit {path}: the wire grid must be positive, finite, "
                             f"({meta['n_layers'] + 1}, {meta['d_model']}); got {tuple(grid.shape)}")
    tokenizer = None
    if (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    kit = EdgeKit(path, fingerprint, lm_head.float().requires_grad_(False).eval(), tokenizer,
                  meta["n_layers"], meta["d_model"], meta.get("eos_token_id"), grid)
    _LOADED[key] = kit
    return kit


GRID_FILE = "wire_grid.safetensors"


def _save_grid(grid: Tensor, out: Path) -> None:
    save_file({"grid": grid.detach().half().contiguous()}, str(out / GRID_FILE))  # fp16-exact values


def _read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "kit.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path / 'kit.json'}: {exc}") from None
