"""`spa pool build`: a pool of base side networks for one backbone, trained once (issue 19 item 1).

Crayon (Bang et al., ACL 2024) blends a user's adapter from a pool of base adapters. Here the
pool is K side networks of one shape (same width, same wire layers), so any weighted
combination of them is again a side network of that shape:

    θ0        a shared start, trained on the union of every style's records
    θ_k       style k's network, fine-tuned from θ0 on style k's records alone

Fine-tuning every member from one start keeps the members in one basin, where weight-space
combinations θ0 + Σ w_k (θ_k − θ0) stay meaningful (task arithmetic); independently trained
MLPs would not blend.

The styles are made here, no download: XSum summaries (when the shared file is there) and
personas — an opening, the message the prompt asked to pass on, a closing — over sentences from
the shared English corpus (or generated ones). The targets are written, never generated, so
building the pool costs one frozen backbone pass per style and a few epochs on its features.

    <pool>/pool.json           format, backbone fingerprint, side config, members and records
    <pool>/weights.safetensors base.* (θ0) and <member>.* (θ_k)
    <pool>/generic.txt         generic prompts (one a line, `\\n` escaped): the negatives of a
                               user's need router (edge_agent/need.py)
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edge_agent.side_network import SideConfig, SideNetwork
from lab import frames
from lab.blend_config import PoolConfig
from lab.data import Example, load_examples, read_prompt_file, write_prompt_file
from routing.errors import FingerprintMismatch, InputError

FORMAT = "spa-side-pool/1"
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Style:
    """One task a side network can learn: an XSum summary or a persona's frame."""

    name: str
    about: str
    kind: str  # "frame" | "xsum" | "frames" (every record its own frame: lab/frames.py)
    opening: str = ""
    closing: str = ""
    offset: int = 0  # where its sentences start in the shuffled sentence list (disjoint slices)


# The pool. Two of the held-out users below are near a member (same opening, another closing),
# one is a composition of two members' parts: the setting Crayon's blending assumes.
POOL_STYLES = (
    Style("news", "one-sentence XSum summaries", "xsum"),
    Style("letter", "a letter: Dear friend, … Yours, Max.", "frame", "Dear friend,", "Yours, Max.", 0),
    Style("captain", "a captain: Ahoy there! … Arr, Captain Flint.", "frame", "Ahoy there!",
          "Arr, Captain Flint.", 1000),
    Style("brief", "a brief: In short: … That is all.", "frame", "In short:", "That is all.", 2000),
    Style("cheer", "a cheer: Hello hello! … Cheers, Sam.", "frame", "Hello hello!", "Cheers, Sam.", 3000),
    Style("radio", "a radio call: Message received: … Over and out.", "frame", "Message received:",
          "Over and out.", 4000),
)
# Opt-in members (`spa pool build --styles …,frames`). `frames` moved bo's blends (+0.10 of the
# gap) and cost ada's (−0.49; RESULTS §10.3): not in the default pool.
EXTRA_STYLES = (
    Style("frames", "many generated frames: any opening, the message, any signature", "frames",
          offset=5000),
)
HELD_OUT = (  # never in the pool: the users blending is measured on
    Style("ada", "Dear friend, … Yours, Ada. (letter's opening, a new signature)", "frame",
          "Dear friend,", "Yours, Ada.", 6000),
    Style("bo", "Ahoy, matey! … Arr, Captain Bo. (near captain)", "frame", "Ahoy, matey!",
          "Arr, Captain Bo.", 7000),
    Style("cy", "In short: … Cheers, Sam. (brief's opening, cheer's closing)", "frame", "In short:",
          "Cheers, Sam.", 8000),
)
STYLES = {s.name: s for s in POOL_STYLES + EXTRA_STYLES + HELD_OUT}


def pool_styles(names: str = "") -> tuple[Style, ...]:
    """The members a pool is built from: comma-separated style names (POOL_STYLES and
    EXTRA_STYLES ones, never a held-out user's), or POOL_STYLES when empty."""
    if not names:
        return POOL_STYLES
    allowed = {s.name for s in POOL_STYLES + EXTRA_STYLES}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in chosen if n not in allowed]
    if bad or len(set(chosen)) != len(chosen):
        raise InputError(f"pool styles {chosen}: each once, from {sorted(allowed)}")
    return tuple(STYLES[n] for n in chosen)
ASKS = ("Pass on this message:", "Tell me this:", "Say this to me:", "Repeat this news:")
XSUM_USER_OFFSET = 500  # XSum records for a user outside the pool start here (pool: from 0)


# ---------------------------------------------------------------- records
_CLEAN = [(re.compile(r" ([,.;:!?')])"), r"\1"), (re.compile(r"([(]) "), r"\1"),
          (re.compile(r" @(.)@ "), r"\1"), (re.compile(r" 's\b"), "'s")]


def corpus_file(explicit: str | Path | None = None) -> Path | None:
    """The English corpus the personas' sentences come from: `explicit`, $SPA_CORPUS, or
    ../shared/data/corpus_en.txt beside the repo; None when none of them is a file."""
    for cand in (explicit, os.environ.get("SPA_CORPUS"), SHARED / "corpus_en.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


@functools.lru_cache(maxsize=4)
def _corpus_sentences(path: str, mtime: float) -> tuple[str, ...]:
    """Every distinct plain sentence (8–16 words) of a corpus file, sorted (parsed once)."""
    found: set[str] = set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("=") or "<unk>" in line:
            continue
        for s in re.split(r"(?<=[.!?]) (?=[A-Z])", line):
            for pat, rep in _CLEAN:
                s = pat.sub(rep, s)
            if 8 <= len(s.split()) <= 16 and s[-1] in ".!?" and '"' not in s:
                found.add(s)
    return tuple(sorted(found))


def sentences(n: int, seed: int = 0, corpus: str | Path | None = None) -> list[str]:
    """`n` distinct plain sentences (8–16 words): from the English corpus (corpus_file) when
    there is one, else generated (lab/synthetic.py); shuffled by `seed`."""
    path = corpus_file(corpus)
    found = list(_corpus_sentences(str(path), path.stat().st_mtime)) if path else []
    if len(found) < n:
        from lab.synthetic import _sentence

        r = random.Random(seed)
        while len(found) < n * 2:
            found.append(_sentence(r).capitalize())
    found = sorted(set(found))
    random.Random(seed).shuffle(found)
    return found[:n] if len(found) >= n else found


def chat_prompt(text: str, tokenizer) -> str:
    """A request as the backbone expects it (its chat template when it has one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Instruction: {text}\nResponse:"


def style_records(style: Style, n: int, tokenizer, start: int = 0, seed: int = 0,
                  xsum: Path | None = None, max_prompt_tokens: int = 128,
                  corpus: str | Path | None = None) -> list[Example]:
    """`n` records of `style`, from its own slice of sentences (XSum: records from `start`;
    `corpus`: see corpus_file)."""
    if style.kind == "xsum":
        if xsum is None:
            raise InputError(f"style {style.name} needs XSum records (--xsum or ../shared/data)")
        out = []
        for ex in load_examples(xsum)[start : start + n]:
            prompt = tokenizer.decode(ex.prompt_ids(tokenizer, max_prompt_tokens))
            out.append(Example("", prompt, "\n" + ex.answer.strip(), ex.line))
        return out
    sents = sentences(style.offset + start + n, seed, corpus)[style.offset + start:]
    r = random.Random(seed + style.offset + start)
    out = []
    for i, s in enumerate(sents[:n]):
        ask = r.choice(ASKS)
        opening, closing = frames.frame(r) if style.kind == "frames" else (style.opening, style.closing)
        out.append(Example("", chat_prompt(f"{ask} {s}", tokenizer), f"{opening} {s} {closing}", i))
    return out


def generic_prompts(n: int, tokenizer, seed: int = 99) -> list[str]:
    """Requests no user customises (questions from lab/users.py's templates)."""
    from lab.users import prompt_text, questions

    return [prompt_text(q, tokenizer) for q in questions(n, seed)]


def xsum_file(explicit: str | Path | None = None) -> Path | None:
    from lab.users import xsum_file as find

    return find(str(explicit) if explicit else None)


# ---------------------------------------------------------------- the pool on disk
@dataclass
class Pool:
    """θ0 and the members' θ_k, with the shape they share."""

    path: Path
    fingerprint: str
    side_cfg: SideConfig
    base: dict[str, torch.Tensor]
    members: dict[str, dict[str, torch.Tensor]]
    info: dict

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def network(self, name: str = "base") -> SideNetwork:
        net = SideNetwork(SideConfig(**self.side_cfg.to_dict()))
        net.load_state_dict(self.base if name == "base" else self.members[name])
        return net.eval()

    def generic(self) -> list[str]:
        return read_prompt_file(self.path / "generic.txt")


def save_pool(out: Path, fingerprint: str, side_cfg: SideConfig, base: dict, members: dict,
              info: dict, generic: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"base.{k}": v.detach().float().contiguous() for k, v in base.items()}
    for name, sd in members.items():
        tensors.update({f"{name}.{k}": v.detach().float().contiguous() for k, v in sd.items()})
    save_file(tensors, str(out / "weights.safetensors"))
    write_prompt_file(generic, out / "generic.txt")
    meta = {"format": FORMAT, "backbone_fingerprint": fingerprint, "side": side_cfg.to_dict(),
            "members": list(members), **info}
    (out / "pool.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def load_pool(path: str | Path, expected_fingerprint: str | None = None) -> Pool:
    path = Path(path)
    meta_file = path / "pool.json"
    if not meta_file.is_file() or not (path / "weights.safetensors").is_file():
        raise InputError(f"{path} is not a side-network pool (pool.json or weights missing): "
                         "build one with `spa pool build`")
    try:
        meta = json.loads(meta_file.read_text())
        assert isinstance(meta, dict) and meta.get("format") == FORMAT
        members = [str(m) for m in meta["members"]]
        side_cfg = SideConfig(**meta["side"])
    except (ValueError, KeyError, TypeError, AssertionError):
        raise InputError(f"{meta_file} is not a {FORMAT} manifest") from None
    fp = str(meta.get("backbone_fingerprint", ""))
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise FingerprintMismatch(fp, expected_fingerprint, what=f"pool {path}")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise InputError(f"cannot read {path / 'weights.safetensors'}: {exc}") from None

    def sub(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    pool = Pool(path, fp, side_cfg, sub("base."), {m: sub(f"{m}.") for m in members}, meta)
    try:
        for name in ["base"] + members:
            pool.network(name)  # every member has every weight, of the shared shape
    except RuntimeError as exc:
        raise InputError(f"pool {path}: member {name} does not fit the pool's shape: {exc}") from None
    if len(members) < 2:
        raise InputError(f"pool {path} has {len(members)} members: blending needs at least 2")
    return pool


# ---------------------------------------------------------------- building
def train_config(cfg: PoolConfig, epochs: int):
    from lab.training import TrainConfig

    return TrainConfig(mode="spa", epochs=epochs, patience=2, max_prompt_tokens=cfg.max_prompt_tokens,
                       every=cfg.every, seed=cfg.seed)


def build_pool(backbone, out: str | Path, cfg: PoolConfig, styles: tuple[Style, ...] = POOL_STYLES,
               xsum: Path | None = None, progress: bool = False,
               corpus: str | Path | None = None) -> Pool:
    """Train θ0 on the union of `styles`' records, then each member from θ0 on its own, on
    the backbone's device (features and side networks there; the pool is saved from the CPU)."""
    from edge_agent.edge_model import EdgeModel, Head
    from edge_agent.side_network import Classifier
    from lab.training import Features, extract_features, split_dev, train_side

    started, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    styles = tuple(s for s in styles if s.kind != "xsum" or xsum is not None)
    if len(styles) < 2:
        raise InputError("a pool needs at least 2 styles")
    tcfg = train_config(cfg, cfg.epochs)
    side_cfg = tcfg.for_combine("add").side_config(backbone.d_model, backbone.n_layers)
    tok = backbone.tokenizer
    feats: dict[str, tuple[Features, Features]] = {}
    for s in styles:
        ex = style_records(s, cfg.records, tok, 0, cfg.seed, xsum, cfg.max_prompt_tokens, corpus)
        tr, dev = split_dev(ex, tcfg)
        feats[s.name] = (extract_features(backbone, tr, side_cfg, tcfg, progress),
                         extract_features(backbone, dev, side_cfg, tcfg, progress))
        print(f"pool: {s.name}: {len(ex)} records, {len(feats[s.name][0])} positions "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    def union(i: int) -> Features:
        parts = [f[i] for f in feats.values()]
        return Features(torch.cat([p.states for p in parts]), torch.cat([p.z for p in parts]),
                        torch.cat([p.y for p in parts]), parts[0].layers)

    edge = EdgeModel.for_backbone(backbone).to(backbone.device)
    base = Head("add", SideNetwork(side_cfg), Classifier(backbone.d_model))
    hist = train_side(edge, base, union(0), union(1), train_config(cfg, cfg.base_epochs), progress)
    theta0 = {k: v.detach().cpu().clone() for k, v in base.side.state_dict().items()}
    members, record = {}, {"base": {"dev_nll": min(h["dev_loss"] for h in hist)}}
    for s in styles:
        head = Head("add", SideNetwork(side_cfg), Classifier(backbone.d_model))
        head.side.load_state_dict(theta0)
        head.side.to(backbone.device)
        before = _nll(edge, head, feats[s.name][1])
        h = train_side(edge, head, *feats[s.name], tcfg, progress)
        members[s.name] = {k: v.detach().cpu().clone() for k, v in head.side.state_dict().items()}
        record[s.name] = {"about": s.about, "records": cfg.records, "positions": len(feats[s.name][0]),
                          "dev_nll_base_net": before, "dev_nll": min(x["dev_loss"] for x in h),
                          "dev_nll_backbone": _backbone_nll(edge, feats[s.name][1])}
        print(f"pool: {s.name}: dev NLL backbone {record[s.name]['dev_nll_backbone']:.3f}, θ0 "
              f"{before:.3f}, member {record[s.name]['dev_nll']:.3f}", flush=True)
    info = {"styles": record, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "backbone": getattr(backbone, "source", "?"), "device": str(backbone.device),
            "corpus": str(corpus_file(corpus) or "generated sentences")}
    save_pool(Path(out), backbone.fingerprint, side_cfg, theta0, members, info,
              generic_prompts(64, tok))
    print(f"pool: {len(members)} members in {info['seconds']:.0f} s ({info['cpu_seconds']:.0f} "
          f"CPU s) -> {out}", flush=True)
    return load_pool(out, backbone.fingerprint)


def _nll(edge, head, feats) -> float:
    from lab.training import evaluate_side

    return evaluate_side(edge, head, feats)


@torch.no_grad()
def _backbone_nll(edge, feats) -> float:
    import torch.nn.functional as F

    total = sum(F.cross_entropy(edge.lm_head(z), y, reduction="sum").item()
                for _, z, y in feats.batches(1024))
    return total / max(1, len(feats))
