"""`spa build-models`: the backbone, its shared edge kit and each user's private bundle, in one
directory that `spa demo`, `spa loadtest --models` and compose's services read.

    <out>/models.json         the manifest: backbone source, the users, what each took to build
    <out>/backbone/           the backbone (for SmolLM2 a link into the converted cache)
    <out>/kits/<id>/          the backbone's public edge kit (lm_head + tokenizer), once
    <out>/users/<name>/       one user's private bundle (side network + classifier)
    <out>/tasks/<name>.jsonl  what that user's network was trained on
    <out>/prompts/<name>.txt  held-out prompts, one a line (`\\n` for a newline)

Whatever is there already is kept, so a later run starts at once and a volume you filled
yourself is used as it is. The manifest is rewritten after every step: an interrupted first
build goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import users as U
from routing.errors import InputError

FORMAT = "spa-models/1"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TINY = "tiny"  # the self-trained 0.9M-parameter backbone: for fast tests and `spa pretrain`
DEMO_PROMPTS = 8
# Seconds each step took on the 2-core CI machine (RESULTS.md §6), for the first run's plan.
ESTIMATE_S = {"convert": 25, "frame": 55, "frame-train": 180, "xsum-train": 140, "tiny": 60,
              "tiny-train": 40}


@dataclass
class ModelSet:
    """What `<out>/models.json` says, with paths resolved against `<out>`."""

    root: Path
    backbone_source: str
    users: list[dict] = field(default_factory=list)

    @property
    def backbone(self) -> Path:
        return self.root / "backbone"

    def bundle(self, name: str) -> Path:
        return self.root / "users" / name

    def prompts(self, name: str) -> Path:
        return self.root / "prompts" / f"{name}.txt"

    def tasks(self, name: str) -> Path:
        return self.root / "tasks" / f"{name}.jsonl"

    def user_names(self) -> list[str]:
        return [u["name"] for u in self.users]

    def save(self) -> None:
        tmp = self.root / "models.json.tmp"
        tmp.write_text(json.dumps({"format": FORMAT, "backbone": self.backbone_source,
                                   "users": self.users}, indent=2))
        tmp.replace(self.root / "models.json")

    @classmethod
    def load(cls, root: str | Path) -> ModelSet:
        root = Path(root)
        path = root / "models.json"
        if not path.is_file():
            raise InputError(f"{root} holds no models.json: build it with `spa build-models --out {root}`")
        try:
            meta = json.loads(path.read_text())
            assert meta["format"] == FORMAT and isinstance(meta["users"], list)
            assert all(isinstance(u, dict) and isinstance(u.get("name"), str)
                       and isinstance(u.get("about", ""), str) for u in meta["users"])
        except (ValueError, KeyError, AssertionError, TypeError):
            raise InputError(f"{path} is not a {FORMAT} manifest") from None
        for u in meta["users"]:  # names become paths under root
            if not _NAME.fullmatch(u["name"]):
                raise InputError(f"{path}: bad user name {u['name']!r} (letters, digits, - and _)")
        return cls(root, str(meta["backbone"]), meta["users"])

    def ready(self) -> bool:
        return (self.backbone / "config.json").is_file() and bool(self.users) and all(
            (self.bundle(u["name"]) / "bundle.json").is_file() and self.prompts(u["name"]).is_file()
            for u in self.users)


def build_models(out: str | Path, backbone: str | None = None, xsum: str | None = None,
                 progress: bool | None = None, corpus: str | None = None,
                 pretrain_steps: int = 400, users: list[U.User] | None = None) -> ModelSet:
    """Build what is missing under `out`; returns the manifest. `backbone` defaults to what
    `out` was built for, else SmolLM2; `users` to ada and news (or bo, without XSum data)."""
    from cloud_worker.packaged import DEFAULT_BACKBONE

    out = Path(out)
    progress = sys.stderr.isatty() if progress is None else progress
    if (out / "models.json").is_file():
        models = ModelSet.load(out)
        backbone = backbone or models.backbone_source
        if models.backbone_source != backbone:
            raise InputError(f"{out} was built for backbone {models.backbone_source!r}, not "
                             f"{backbone!r}: use another directory (--out, or --cache for the demo) or remove {out}")
    elif (out / "backbone").exists() or (out / "bundle").exists():
        raise InputError(f"{out} holds models but no models.json (an older layout?): remove it "
                         "or choose another --out")
    else:
        models = ModelSet(out, backbone or DEFAULT_BACKBONE)
    xsum_path = U.xsum_file(xsum)
    if users is None:
        users = [U.ADA] if models.backbone_source == TINY else U.default_users(xsum_path)
    if not models.users:
        models.users = [{"name": u.name, "about": u.about} for u in users]
    if models.ready():
        if _kits_without_grid(models):  # a set built before quantised frames (issue 22)
            _add_grids(models, corpus, pretrain_steps, progress)
        return models
    out.mkdir(parents=True, exist_ok=True)
    models.save()  # first: an interrupted build is recognised and resumed
    _plan(models, users, xsum_path)
    started = time.monotonic()
    bb = _backbone(models, corpus, pretrain_steps, progress)
    for user in users:
        entry = next(u for u in models.users if u["name"] == user.name)
        if (models.bundle(user.name) / "bundle.json").is_file() and models.prompts(user.name).is_file():
            continue
        _build_user(models, bb, user, entry, xsum_path, progress)
        models.save()
    models.save()
    print(f"models ready in {time.monotonic() - started:.0f} s: {out}", flush=True)
    return models


def _plan(models: ModelSet, users: list[U.User], xsum: Path | None) -> None:
    steps: list[tuple[str, int]] = []
    if not (models.backbone / "config.json").is_file():
        if models.backbone_source == TINY:
            steps.append(("pretrain the tiny backbone on generated text", ESTIMATE_S["tiny"]))
        else:
            steps.append((f"load {models.backbone_source} (converted once into a plain checkpoint "
                          "if it is not yet)", ESTIMATE_S["convert"]))
    for u in users:
        if (models.bundle(u.name) / "bundle.json").is_file():
            continue
        if models.backbone_source == TINY:
            steps.append((f"{u.name}: train the side network on generated letters", ESTIMATE_S["tiny-train"]))
        elif u.task == "frame":
            steps.append((f"{u.name}: write {u.train_records} training answers with the backbone "
                          f"('{u.opening} … {u.closing}')", ESTIMATE_S["frame"]))
            steps.append((f"{u.name}: train the side network and gate ({u.about})", ESTIMATE_S["frame-train"]))
        else:
            steps.append((f"{u.name}: train the side network and gate on {u.train_records} XSum "
                          f"records from {xsum}", ESTIMATE_S["xsum-train"]))
    total = sum(s for _, s in steps)
    print(f"building the models into {models.root} (first run only): {len(steps)} steps, about "
          f"{(total + 30) // 60} min on 2 cores", flush=True)
    for i, (what, s) in enumerate(steps, 1):
        print(f"  {i}. {what}  (~{s} s)", flush=True)


def _backbone(models: ModelSet, corpus: str | None, steps: int, progress: bool):
    from cloud_worker.backbone import Backbone

    target = models.backbone
    if not (target / "config.json").is_file():
        if models.backbone_source == TINY:
            from lab.pretrain import pretrain
            from lab.synthetic import make_corpus

            if corpus is None:
                corpus = str(models.root / "corpus.txt")
                Path(corpus).write_text(make_corpus(3000, seed=0))
            pretrain(corpus, target, "tiny", steps, progress=progress)
        else:
            from cloud_worker.packaged import resolve

            src = Path(resolve(models.backbone_source))
            if not (src / "config.json").is_file():
                raise InputError(f"--backbone {models.backbone_source}: {src} is not a model directory")
            if target.is_symlink():
                target.unlink()
            # A relative link when the cache is inside the model directory (compose sets
            # SPA_CACHE=/models/cache, so every container sees the same path).
            try:
                link = os.path.relpath(src.resolve(), models.root.resolve())
                link = link if not link.startswith("..") else str(src.resolve())
            except ValueError:
                link = str(src.resolve())
            target.symlink_to(link, target_is_directory=True)
        models.save()
    print(f"loading the backbone {models.backbone_source} from {target}", flush=True)
    return Backbone.load(target)


def _kits_without_grid(models: ModelSet) -> list[Path]:
    from edge_agent.kit import GRID_FILE

    kits = models.root / "kits"
    return [k for k in sorted(kits.iterdir()) if (k / "kit.json").is_file() and not (k / GRID_FILE).is_file()
            ] if kits.is_dir() else []


def _add_grids(models: ModelSet, corpus, pretrain_steps, progress: bool) -> None:
    """Give the backbone's kit its wire grid (calibrated here, as `spa train` does), so that the
    set's users can take int8/int4 frames; the bundles themselves are unchanged."""
    from edge_agent.edge_model import EdgeModel
    from edge_agent.kit import save_kit

    print(f"edge kit without a wire grid (built before int8/int4 frames): calibrating it in {models.root}",
          flush=True)
    save_kit(EdgeModel.for_backbone(_backbone(models, corpus, pretrain_steps, progress)), models.root / "kits")


def _build_user(models: ModelSet, bb, user: U.User, entry: dict, xsum: Path | None,
                progress: bool) -> None:
    from edge_agent.bundle import save_bundle
    from lab.data import load_examples, write_prompt_file
    from lab.synthetic import make_personal_tasks, write_jsonl
    from lab.training import TrainConfig, train_bundle

    t0 = time.monotonic()
    tasks = models.tasks(user.name)
    if models.backbone_source == TINY:
        write_jsonl(make_personal_tasks(400, seed=1), tasks)
        records = load_examples(tasks)
        examples = records[:360]
        held = [ex.prompt for ex in records[360:360 + DEMO_PROMPTS]]
        cfg = TrainConfig(mode="spa", epochs=8, rollout_prompts=24, rollout_tokens=24)
    else:
        if user.task == "xsum":
            if xsum is None:
                raise InputError(f"user {user.name} needs XSum records: --xsum FILE or $SPA_XSUM")
            # The prompt as cut for training, the summary on the next line: after "Summary:"
            # SmolLM2 itself starts with a newline, and a side network taught to write " The…"
            # there instead pushed <|im_end|> up with it: 7 of 40 summaries were empty
            # (RESULTS.md §6). Starting where the backbone starts, none are.
            tok = bb.tokenizer
            write_jsonl([{"prompt": tok.decode(ex.prompt_ids(tok, user.max_prompt_tokens)),
                          "output": "\n" + ex.answer.strip()}
                         for ex in load_examples(xsum)[: user.train_records]], tasks)
            examples = load_examples(tasks)
        else:
            if not tasks.is_file():
                write_jsonl(U.frame_records(bb, user, progress), tasks)
            examples = load_examples(tasks)
        entry["data_seconds"] = round(time.monotonic() - t0, 1)
        tok = bb.tokenizer
        held = [tok.decode(ex.prompt_ids(tok, user.max_prompt_tokens))  # as cut for training
                for ex in U.held_out(user, xsum, DEMO_PROMPTS, tok)]
        cfg = user_train_config(user)
    print(f"{user.name}: training on {len(examples)} records ({user.about})", flush=True)
    edge, record = train_bundle(bb, examples, cfg, progress)
    record.update(user=user.name, about=user.about, data=str(tasks), backbone=models.backbone_source)
    save_bundle(edge, models.bundle(user.name), record, kits=models.root / "kits")
    write_prompt_file(held, models.prompts(user.name))
    entry.update(seconds=round(time.monotonic() - t0, 1), records=len(examples),
                 m_dev=record["heads"]["add"]["calibration"]["m_dev"])
    print(f"{user.name}: bundle ready in {entry['seconds']:.0f} s", flush=True)


def user_train_config(user: U.User, **changes):
    """How a user's side network and gate are trained (budgets for the 2-core demo machine;
    `changes` for larger runs, e.g. benchmarks/persona_quality.py on a GPU)."""
    from lab.training import TrainConfig

    cfg = TrainConfig(mode="spa", epochs=user.epochs, max_prompt_tokens=user.max_prompt_tokens,
                      target_m=user.target_m, clf_features=user.clf_features,
                      clf_hidden=user.clf_hidden, rollout_prompts=user.rollout_prompts,
                      rollout_tokens=24, calib_prompts=user.calib_prompts)
    return dataclasses.replace(cfg, **changes)
