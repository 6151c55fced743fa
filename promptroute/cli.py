"""The `promptroute` command: a thin layer over the library (parse, call one function, print).

Errors the user can fix (bad log lines, bad config, bad artifacts) become one message on stderr
and exit code 2; a traceback means a bug. Parsing imports nothing heavy: `--help` and argument
errors answer before scikit-learn or the server are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

# Defaults shown in --help; tests/test_cli.py checks they equal TrainOptions' and
# StreamingOptions' (importing those here would load scikit-learn before parsing).
C_GRID_DEFAULT = (0.1, 0.3, 1.0)
CV_FOLDS_DEFAULT = 3
CHUNK_SIZE_DEFAULT = 20_000
EPOCHS_DEFAULT = 2


def _err(msg: str) -> None:
    print(f"promptroute: error: {msg}", file=sys.stderr)


def _progress(msg: str) -> None:
    from training.build import log_progress

    log_progress(msg)


def _load(paths: list[str], split: str, skip_invalid: bool):
    from training.build import load_split

    return load_split(paths, split, skip_invalid, _progress)


def _train_streaming(a: argparse.Namespace) -> dict[str, Any]:
    """`train --streaming`: logs read chunk by chunk, memory bounded by --chunk-size."""
    from training.build import train_streaming_and_save
    from training.streaming import StreamingOptions

    opts = StreamingOptions(
        chunk_size=a.chunk_size,
        epochs=a.epochs,
        split=a.split,
        skip_invalid=a.skip_invalid,
        target_budget=a.target_budget,
        target_strong_share=a.target_strong_share,
        knob=a.knob,
    )
    return train_streaming_and_save(a.logs, a.out, opts, catalog_path=a.catalog, progress=_progress)


def _signed(artifact: str) -> bool:
    """Whether `train` signed the artifact (it does when PROMPTROUTE_ARTIFACT_KEY is set)."""
    from models.artifact import SIGNATURE

    return (Path(artifact) / SIGNATURE).is_file()


# ----------------------------------------------------------------------------- commands
def cmd_train(a: argparse.Namespace) -> int:
    from training.trainer import TrainOptions

    if a.streaming and a.calibrate_per_model:
        raise ValueError(
            "--calibrate-per-model: applies to batch training; --streaming fits by SGD "
            "without a cross-validation sample"
        )
    if a.streaming and a.domain_groups is not None:
        raise ValueError(
            "--domain-groups: applies to batch training; --streaming learns no domains"
        )
    if a.streaming and a.idf_power is not None:
        raise ValueError(
            "--idf-power: applies to batch training; --streaming weights no n-grams (it "
            "never sees all prompts before fitting)"
        )
    if a.streaming:
        manifest = _train_streaming(a)
        m = manifest["metrics"]
        print(
            json.dumps(
                {
                    "artifact": str(a.out),
                    "router_version": manifest["router_version"],
                    "signed": _signed(a.out),
                    "records": m["n_records"],
                    "ignored_directly_labelled": m.get("records_directly_labelled_ignored", 0),
                    "default_knob": m["default_knob"],
                    "cv_routing": m["cv_routing"],
                    "train_seconds": m["train_seconds"],
                },
                indent=2,
            )
        )
        return 0

    opts = TrainOptions(
        tolerance=a.tolerance,
        c_grid=tuple(a.c_grid),
        cv_folds=a.cv_folds,
        strategy=a.strategy,
        target_budget=a.target_budget,
        target_strong_share=a.target_strong_share,
        knob=a.knob,
        n_jobs=a.jobs,
        **({} if a.calibrate_per_model is None else {"calibrate_per_model": a.calibrate_per_model}),
        **({} if a.domain_groups is None else {"domain_groups": a.domain_groups}),
        **({} if a.idf_power is None else {"idf_power": a.idf_power}),
    )
    from training.build import train_and_save

    manifest = train_and_save(
        a.logs,
        a.out,
        split=a.split,
        catalog_path=a.catalog,
        skip_invalid=a.skip_invalid,
        options=opts,
        progress=_progress,
        verifier_logs=a.verifier_logs or (),
    )
    m = manifest["metrics"]
    print(
        json.dumps(
            {
                "artifact": str(a.out),
                "router_version": manifest["router_version"],
                "signed": _signed(a.out),
                "models": len(manifest["models"]),
                "records": m["n_records"],
                "default_strategy": m["default_strategy"],
                "default_knob": m["default_knob"],
                "default_knob_mix": m.get("default_knob_mix"),
                "knob_target": m.get("knob_target"),
                "cv_routing": m["cv_routing"],
                "calibration": m["calibration"],
                "verifiers": {
                    model: {k: v.get(k) for k in ("examples", "oof_auc", "threshold_rule")}
                    for model, v in (m.get("verifiers") or {}).items()
                },
                "train_seconds": m["train_seconds"],
            },
            indent=2,
        )
    )
    return 0


def _resolve_artifact(path: str | None) -> Path:
    return Path(path) if path else _default_model()


def _shown(value: Any, missing: str = "never reached") -> str:
    """A report figure for people: None (a target the curve never reaches) said in words."""
    return missing if value is None else str(value)


def _print_table(report: dict[str, Any]) -> None:
    r = report["router"]
    print(f"records: {report['n']}   strategy: {report['strategy']}")
    skipped = report.get("skipped_by_reason") or {}
    if report.get("n_skipped"):
        print(f"skipped {report['n_skipped']} record(s):")
        for why, count in skipped.items():
            print(f"  {count} × {why}")
    rows = sorted(report["single_models"].items(), key=lambda kv: -kv[1]["quality"])
    width = max([len(m) for m, _v in rows] + [len("HEURISTIC")]) + 2
    print(f"{'':{width}s} {'quality':>8s} {'cost $/req':>12s}")
    for m, v in rows:
        print(f"  {m:{width - 2}s} {v['quality']:8.4f} {v['cost']:12.3e}")
    for name in ("oracle", "heuristic"):
        v = report[name]
        print(f"  {name.upper():{width - 2}s} {v['quality']:8.4f} {v['cost']:12.3e}")
    print(
        f"router: AIQ {r['aiq']}  (Zero router {report['zero_router']['aiq']})  "
        f"max quality {r['max_quality']}"
    )
    print(
        f"        cost to match best single: {_shown(r['cost_to_match_best'])}   "
        f"to 95%: {_shown(r['cost_to_95pct_best'])}"
    )
    print(
        f"        accuracy {r['accuracy']}  macro-F1 {r['macro_f1']}  quality at heuristic cost "
        f"{_shown(r['quality_at_heuristic_cost'], 'n/a')} "
        f"(heuristic {report['heuristic']['quality']})"
    )
    if report.get("two_model"):
        t = report["two_model"]
        print(
            f"two-model ({t['strong']} vs {t['weak']}): APGR {t['apgr']}  "
            f"CPT50 {_shown(t['cpt50'])}  CPT80 {_shown(t['cpt80'])}"
        )
    for s, alt in report.get("router_alternatives", {}).items():
        print(
            f"  alternative head {s}: AIQ {alt['aiq']}  "
            f"cost to match best {_shown(alt['cost_to_match_best'])}"
        )
    _print_cascade(report.get("cascade"), "")
    if report.get("by_task"):
        print("by task:")
        task_width = max(len(task) for task in report["by_task"])
        for task, v in report["by_task"].items():
            tm = f"  APGR {v['two_model']['apgr']}" if v.get("two_model") else ""
            print(
                f"  {task:{task_width}s} n={v['n']:<6d} "
                f"AIQ {v['router']['aiq']}  zero {v['zero_router']['aiq']}  "
                f"match-best {_shown(v['router']['cost_to_match_best'])}{tm}"
            )
            _print_cascade(v.get("cascade"), f" [{task}]")


def _print_cascade(c: dict[str, Any] | None, label: str) -> None:
    if not c:
        return
    pre, cas, auc = c["precall"], c["cascade"], c["auc_weak_right"]
    na = "n/a (one outcome only)"
    print(f"cascade{label} ({c['weak']} → {c['strong']}, n={c['n']}; {c['score_source']}):")
    print(
        f"        AUC for 'cheap model is right': cascade {_shown(auc['cascade'], na)}  "
        f"pre-call {_shown(auc['precall'], na)}   cheap call costs "
        f"{_shown(c['weak_cost_share'], 'n/a')} of the strong one"
    )
    print(
        f"        APGR: cascade {_shown(cas['apgr'], 'n/a')}  pre-call {_shown(pre['apgr'], 'n/a')}"
        f"   cost to 95% of strong: cascade {_shown(cas['cost_to_95pct_strong'])}  "
        f"pre-call {_shown(pre['cost_to_95pct_strong'])}"
    )
    d = c.get("at_default_threshold")
    if d:
        print(
            f"        at the verifier's threshold {d['threshold']}: escalates {d['strong_share']}, "
            f"quality {d['quality']}, cost {d['cost_vs_strong']} of strong"
        )
    lat = c.get("latency")
    added = (
        "no latency in the logs"
        if lat is None
        else f"{_shown(lat['added_ms_at_95pct'], 'n/a (95% never reached)')} ms"
    )
    print(f"        added latency at 95%: {added}")
    even = c["break_even_weak_cost_share"]
    why = (
        "no break-even: 95% of the strong model is never reached"
        if even is None
        else f"it would while the cheap call costs under ~{even} of the strong one"
    )
    print(f"        cascade pays: {'yes' if c['pays'] else 'no'}   ({why})")


def _dataset_name(a: argparse.Namespace) -> str:
    """What the figures were measured on, for titles: file names and the side or the folds."""
    files = ", ".join(Path(p).name for p in a.logs)
    how = f"{a.cv}-fold out-of-fold" if a.cv else f"{a.split} side" if a.split != "all" else "all"
    return f"{files} ({how})"


def _eval_offpolicy(a: argparse.Namespace) -> int:
    """`eval` on decision logs: off-policy estimates of how the artifact would have done."""
    from models.artifact import load_router
    from models.catalog import Catalog, load_catalog
    from training.offpolicy import evaluate_offpolicy, read_decisions

    router, manifest = load_router(_resolve_artifact(a.model))
    catalog = load_catalog(a.catalog) if a.catalog else Catalog.from_dict(manifest["catalog"])
    reward = load_router(a.reward_model)[0] if a.reward_model else None
    decisions, skipped = read_decisions(a.logs)
    _progress(
        f"{len(decisions)} logged decision(s) with outcomes; set aside: "
        + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
    )
    report = evaluate_offpolicy(router, decisions, catalog, reward=reward)
    report["skipped_rows"] = skipped

    def line(name: str, est: dict[str, Any]) -> str:
        lo, hi = est["ci95"]
        return f"  {name:32s} {est['estimate']:10.4g}   95% CI [{lo:.4g}, {hi:.4g}]"

    print(
        f"off-policy estimate for router {report['router_version']} at knob {report['knob']:g}"
        f" on {report['n']} logged decisions"
    )
    print(
        f"  {report['single_calls']} single calls with propensities (smallest "
        f"{report['min_propensity']}), {report['multi_outcome_rows']} multi-outcome rows; "
        f"{report['supporting_decisions']} decisions chose what this router would"
    )
    print(line("quality, doubly robust", report["quality"]["dr"]))
    print(line("quality, inverse propensity", report["quality"]["ips"]))
    print(line("cost $/request, doubly robust", report["cost_usd"]["dr"]))
    print(line("cost $/request, inverse propensity", report["cost_usd"]["ips"]))
    if report["logged_quality"] is not None:
        print(f"  the logged policy's own quality: {report['logged_quality']:.4g}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from models.catalog import load_catalog
    from training.evaluate import cross_val_evaluate, evaluate
    from training.offpolicy import has_propensities

    if not a.cv and has_propensities(a.logs):  # a peek at the first lines
        return _eval_offpolicy(a)
    router = manifest = None
    if not a.cv:  # a missing or refused artifact is said before minutes of reading logs
        from models.artifact import load_router

        router, manifest = load_router(_resolve_artifact(a.model))
    records, _ = _load(a.logs, a.split, a.skip_invalid)
    if a.cv:
        from training.trainer import TrainOptions

        catalog = load_catalog(a.catalog)
        report = cross_val_evaluate(
            records, catalog, TrainOptions(n_jobs=a.jobs), folds=a.cv, progress=_progress
        )
    else:
        from models.catalog import Catalog

        assert router is not None and manifest is not None
        catalog = load_catalog(a.catalog) if a.catalog else Catalog.from_dict(manifest["catalog"])
        report = evaluate(router, records, catalog, strategy=a.strategy)
        report["router_version"] = manifest["router_version"]
    report["dataset"] = _dataset_name(a)
    _print_table(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    if a.report:
        from training.report import markdown_report

        Path(a.report).write_text(markdown_report(report, title=report["dataset"]))
    if a.plot:
        from training.report import plot_curve

        plot_curve(report, a.plot, dataset=report["dataset"])
    return 0


def cmd_retrain(a: argparse.Namespace) -> int:
    """Retrain from decision logs; promote the candidate only when it is not worse."""
    from models.artifact import read_manifest
    from models.catalog import Catalog, load_catalog
    from promptroute.loopconfig import load_loop_config
    from training.loop import retrain, write_report
    from training.trainer import TrainOptions

    config = load_loop_config(a.config)
    options = config.retrain.to_options(
        holdout_share=a.holdout_share, margin=a.margin, min_outcomes=a.min_outcomes
    )
    key = _admin_key(a.admin_key_env) if a.service else None  # before training, not after
    serving = _resolve_artifact(a.serving)
    manifest = read_manifest(serving)
    catalog = load_catalog(a.catalog) if a.catalog else Catalog.from_dict(manifest["catalog"])
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(a.artifacts_dir) / f"retrained-{stamp}"
    n = 1
    while out.exists():  # two retrains within a second
        n += 1
        out = Path(a.artifacts_dir) / f"retrained-{stamp}-{n}"
    report = retrain(
        a.logs,
        a.labelled or [],
        serving,
        out,
        catalog,
        options,
        train_options=TrainOptions(c_grid=tuple(a.c_grid), cv_folds=a.cv_folds, n_jobs=a.jobs),
        progress=_progress,
    )
    if report["promoted"] and a.service and key:
        report["reload"] = _reload_service(a.service, out, key)
    write_report(report, a.json, a.report)
    summary = {
        "promoted": report["promoted"],
        "reason": report["reason"],
        "artifact": report.get("artifact"),
        "reload": report.get("reload"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    """Replay prompts through the configured upstreams, grade the answers, write outcomes."""
    import asyncio
    import os

    from models.catalog import load_catalog
    from models.errors import ConfigError
    from promptroute.label import Labeller, read_prompt_rows, sample_decision_log
    from promptroute.loopconfig import load_loop_config
    from serving.config import load_settings
    from serving.gateway.upstreams import resolve_upstreams

    config = load_loop_config(a.config)
    if config.label is None:
        raise ConfigError("label", "the config has no label: section", source=a.config)
    settings = load_settings(upstreams=config.upstreams)
    upstreams = resolve_upstreams(settings, os.environ)
    catalog = load_catalog(a.catalog)
    if a.prompts:
        rows = read_prompt_rows(a.prompts)
    else:
        from models.errors import DataError
        from serving.decision_log import read_log_lines

        if a.sample < 1:
            raise ValueError(f"--sample: must be at least 1, got {a.sample}")
        try:
            rows = sample_decision_log(read_log_lines(a.decision_log), a.sample, a.seed)
        except FileNotFoundError:
            raise DataError(a.decision_log, None, "no decision log here") from None
        if not rows:
            raise DataError(a.decision_log, None, "no row with prompt text to replay")
    labeller = Labeller(config.label, upstreams, catalog, seed=a.seed)
    bar = _progress_bar("label", len(rows))
    try:
        summary = asyncio.run(labeller.run(rows, a.out, progress=bar.update))
    finally:
        bar.close()
    print(json.dumps({"out": a.out, **summary.__dict__}, indent=2))
    return 0


class _Bar:
    """A tqdm bar on a terminal; plain progress lines (every 10%) otherwise."""

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last = -1

    def update(self, done: int, total: int) -> None:
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=self.name, unit="prompt")
            self.bar.update(done - self.bar.n)
            return
        step = max(total // 10, 1)
        if done == total or done // step != self.last:
            self.last = done // step
            _progress(f"{self.name}: {done}/{total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(name: str, total: int) -> _Bar:
    return _Bar(name, total)


def _admin_key(key_env: str) -> str:
    import os

    from models.errors import ConfigError

    key = os.environ.get(key_env)
    if not key:
        raise ConfigError("--admin-key-env", f"environment variable {key_env} is not set")
    return key


def _reload_service(url: str, artifact: Path, key: str) -> dict[str, Any]:
    """POST /admin/reload on a running service; a refusal is an error the user can fix."""
    import httpx

    from models.errors import ConfigError

    endpoint = url.rstrip("/") + "/admin/reload"
    try:
        resp = httpx.post(
            endpoint,
            json={"artifact": str(artifact.resolve())},
            headers={"X-API-Key": key},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        raise ConfigError("--service", f"cannot reach {endpoint}: {exc}") from None
    if resp.status_code != 200:
        raise ConfigError(
            "--service",
            f"{endpoint} answered {resp.status_code}: {resp.text[:300]} "
            f"(the candidate is saved at {artifact})",
        )
    return resp.json()


def cmd_route(a: argparse.Namespace) -> int:
    """Route one prompt through the in-process API and print /route's answer, explained."""
    from promptroute.api import PromptRouter

    fields: dict[str, Any] = {
        "candidates": a.candidates,
        "task_type": a.task_type,
        "expected_output_tokens": a.output_tokens,
        "knob": a.knob,
    }
    text: dict[str, Any]
    if a.messages:
        text = {"messages": json.loads(a.prompt)}
    else:
        text = {"prompt": a.prompt}
    with PromptRouter.load(_resolve_artifact(a.model)) as router:
        decision = router.route(**text, **fields)
        answer = decision.to_response()
        answer["explanation"] = router.explain(
            **text,
            model=decision.model,
            versus=decision.fallbacks[0] if decision.fallbacks else None,
        )
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from serving.server import serve

    return serve(
        config=a.config,
        model=a.model,
        host=a.host,
        port=a.port,
        workers=a.workers,
        default_model=_default_model,
        server=a.server,
    )


def cmd_sign(a: argparse.Namespace) -> int:
    """Sign an artifact folder with the key in PROMPTROUTE_ARTIFACT_KEY (HMAC-SHA256).

    The artifact's files are verified against its manifest first; the signature goes to
    ARTIFACT/signature.json. A service with the same key set loads only artifacts signed so.
    """
    from models.artifact import KEY_ENV, artifact_key, read_manifest, sign_artifact
    from models.errors import ConfigError

    key = artifact_key()
    if key is None:
        raise ConfigError(KEY_ENV, "not set; export the signing key to sign an artifact")
    sign_artifact(a.artifact, key)
    version = read_manifest(a.artifact)["router_version"]
    print(f"signed {a.artifact} (router {version}) with the key in {KEY_ENV}")
    return 0


def _default_model() -> Path:
    """The bundled default model, trained from the bundled data the first time it is needed."""
    from training.build import ensure_default_artifact

    return ensure_default_artifact(progress=_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="promptroute", description="A learned LLM router: train, evaluate, route, serve."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def logs_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--logs",
            nargs="+",
            required=True,
            metavar="PATH",
            help="labelled logs (.jsonl or .jsonl.gz), folders (every *.jsonl* file in them, "
            "e.g. the service's per-process decision logs and their rotated backups) or glob "
            "patterns; decision and outcome rows are joined by request id across all of them",
        )
        sp.add_argument(
            "--split",
            choices=("train", "test", "all"),
            default="all",
            help="side of the sha256(prompt) 80/20 split to use (default: all)",
        )
        sp.add_argument(
            "--skip-invalid",
            action="store_true",
            help="skip bad lines (counted and reported) instead of stopping",
        )
        sp.add_argument(
            "--catalog",
            help="catalog YAML (default: models/catalog.yaml, or the artifact's snapshot)",
        )
        sp.add_argument("--jobs", type=int, default=2, help="parallel fits (default 2)")

    t = sub.add_parser(
        "train", help="train a router from labelled logs", description=cmd_train.__doc__
    )
    logs_args(t)
    t.add_argument("--out", required=True, help="artifact folder to write")
    t.add_argument(
        "--verifier-logs",
        nargs="+",
        metavar="FILE",
        help="extra logs with answer text ('response' per outcome) that train only the answer "
        "verifiers (the --logs train them too when they carry answers)",
    )
    t.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="quality tolerance for the best-model label (default 0)",
    )
    t.add_argument(
        "--c-grid",
        type=float,
        nargs="+",
        default=list(C_GRID_DEFAULT),
        help="inverse regularisation values C to cross-validate (default: %(default)s)",
    )
    t.add_argument("--cv-folds", type=int, default=CV_FOLDS_DEFAULT)
    t.add_argument(
        "--strategy",
        choices=("auto", "quality", "classifier"),
        default="auto",
        help="routing head to use by default (auto: the one with the higher CV AIQ)",
    )
    g = t.add_mutually_exclusive_group()
    g.add_argument(
        "--target-budget",
        type=float,
        help="default knob: spend at most this fraction of the strongest model's cost",
    )
    g.add_argument(
        "--target-strong-share",
        type=float,
        help="default knob: send at most this share of calls to the strongest model",
    )
    g.add_argument("--knob", type=float, help="default knob (cost weight λ ≥ 0)")
    t.add_argument(
        "--calibrate-per-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="calibrate each model on its own cross-validation sample, not only on its part "
        "of the shared one (the default): better routing for a source the logs hold little "
        "of next to others; --no-calibrate-per-model saves the extra cross-validation when "
        "logs pool several sources",
    )
    t.add_argument(
        "--domain-groups",
        type=int,
        metavar="N",
        help="group the finer domains inside a task (a log's 'domain', or 'meta.subject', "
        "such as MMLU's subjects) into at most N by their models' mean quality; each is a "
        "domain the router learns to recognise (default 16; 0 ignores finer domains)",
    )
    t.add_argument(
        "--idf-power",
        type=float,
        metavar="P",
        help="weight the hashed n-grams by idf ** P, idf from the training prompts, so rare "
        "words (a subject's vocabulary) count for more than those every prompt shares "
        "(default 0: unweighted; 1 routes slightly better and costs ~5 µs per decision)",
    )
    t.add_argument(
        "--streaming",
        action="store_true",
        help="for logs larger than memory: read them chunk by chunk and fit the quality "
        "head incrementally (SGD); memory is bounded by --chunk-size",
    )
    t.add_argument(
        "--chunk-size",
        type=int,
        default=CHUNK_SIZE_DEFAULT,
        help="records per chunk with --streaming",
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS_DEFAULT,
        help="passes over the logs with --streaming",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a router offline on labelled logs")
    logs_args(e)
    e.add_argument("--model", help="artifact folder (default: the bundled default model)")
    e.add_argument(
        "--strategy",
        choices=("quality", "classifier"),
        help="head to evaluate (default: the artifact's)",
    )
    e.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="instead of --model: train and evaluate out of fold, K folds",
    )
    e.add_argument(
        "--reward-model",
        metavar="ARTIFACT",
        help="decision logs only: the reward model of the doubly robust estimate (default: --model)",
    )
    e.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    e.add_argument("--report", metavar="OUT.md", help="write a Markdown report")
    e.add_argument("--plot", metavar="OUT.png", help="draw the cost-quality curve")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser(
        "route",
        help="route one prompt and explain the decision",
        description="Route one prompt with the same pipeline as POST /route (filters, "
        "breakers, rules, the learned router) and print its answer with the features that "
        "decided between the chosen model and the first fallback.",
    )
    r.add_argument(
        "prompt", help="the prompt text (or a JSON list of chat messages with --messages)"
    )
    r.add_argument(
        "--messages", action="store_true", help="PROMPT is OpenAI-style chat messages as JSON"
    )
    r.add_argument("--model", help="artifact folder (default: the bundled default model)")
    r.add_argument("--knob", type=float, help="cost weight λ ≥ 0 (default: the artifact's)")
    r.add_argument("--candidates", nargs="+", help="restrict to these models")
    r.add_argument("--task-type", help="request task type, if the caller knows it")
    r.add_argument("--output-tokens", type=int, help="expected output tokens (for cost estimates)")
    r.set_defaults(func=cmd_route)

    rt = sub.add_parser(
        "retrain",
        help="retrain from decision logs; promote only a candidate that is not worse",
        description=cmd_retrain.__doc__,
    )
    rt.add_argument(
        "--logs", nargs="+", required=True, metavar="FILE", help="decision logs (oldest first)"
    )
    rt.add_argument(
        "--labelled", nargs="+", metavar="FILE", help="labelled files to train on as well"
    )
    rt.add_argument("--serving", help="the serving artifact (default: the bundled default model)")
    rt.add_argument(
        "--artifacts-dir",
        default=str(Path("models") / "artifacts"),
        help="where a promoted candidate is written (default: %(default)s)",
    )
    rt.add_argument("--config", help="loop config YAML (its retrain: section)")
    rt.add_argument("--holdout-share", type=float, help="newest share of rows to compare on")
    rt.add_argument("--margin", type=float, help="AIQ the candidate may lose and still ship")
    rt.add_argument("--min-outcomes", type=int, help="outcomes a model needs before it is routable")
    rt.add_argument("--service", metavar="URL", help="reload this running service on promotion")
    rt.add_argument(
        "--admin-key-env",
        default="PROMPTROUTE_ADMIN_KEY",
        help="environment variable holding the service's admin key (default: %(default)s)",
    )
    rt.add_argument("--catalog", help="catalog YAML (default: the serving artifact's snapshot)")
    rt.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    rt.add_argument("--report", metavar="OUT.md", help="write the report as Markdown")
    rt.add_argument("--jobs", type=int, default=2, help="parallel fits (default 2)")
    rt.add_argument(
        "--c-grid",
        type=float,
        nargs="+",
        default=list(C_GRID_DEFAULT),
        help="inverse regularisation values C to cross-validate (default: %(default)s)",
    )
    rt.add_argument("--cv-folds", type=int, default=CV_FOLDS_DEFAULT)
    rt.set_defaults(func=cmd_retrain)

    lb = sub.add_parser(
        "label",
        help="replay prompts through upstreams and grade the answers (multi-outcome records)",
        description=cmd_label.__doc__,
    )
    lb.add_argument("--config", required=True, help="loop config YAML (upstreams: and label:)")
    src = lb.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE", help="JSONL of {prompt|messages, id?, ...}")
    src.add_argument("--decision-log", metavar="PATH", help="sample prompts from a decision log")
    lb.add_argument("--sample", type=int, default=500, help="rows drawn from --decision-log")
    lb.add_argument(
        "--out", required=True, help="output JSONL (appended; resumes where it stopped)"
    )
    lb.add_argument("--catalog", help="catalog YAML (prices; default: the packaged catalog)")
    lb.add_argument("--seed", type=int, default=0, help="sampling and judge-order seed")
    lb.set_defaults(func=cmd_label)

    sg = sub.add_parser(
        "sign",
        help="sign an artifact with the key in PROMPTROUTE_ARTIFACT_KEY",
        description=cmd_sign.__doc__,
    )
    sg.add_argument("artifact", metavar="ARTIFACT", help="artifact folder to sign")
    sg.set_defaults(func=cmd_sign)

    s = sub.add_parser("serve", help="start the HTTP routing service")
    s.add_argument(
        "--model", help="artifact folder (default: $PROMPTROUTE_ARTIFACT, else the bundled model)"
    )
    s.add_argument("--config", help="service config YAML (default: $PROMPTROUTE_CONFIG)")
    s.add_argument("--host", help="default: $PROMPTROUTE_HOST, else the config's (127.0.0.1)")
    s.add_argument("--port", type=int, help="default: $PROMPTROUTE_PORT, else the config's (8000)")
    s.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: $PROMPTROUTE_WORKERS, else 1); more than one needs "
        "state: {backend: redis} in the config",
    )
    s.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        help="ASGI server (default: $PROMPTROUTE_SERVER, else uvicorn for one worker and granian "
        "for several)",
    )
    s.set_defaults(func=cmd_serve)
    return p


def expand_logs(paths: list[str]) -> list[str]:
    """Files from ``--logs``: a folder gives its ``*.jsonl*`` files, a glob its matches (each
    sorted); a plain path stays as given. A folder or glob that matches nothing is an error."""
    import glob

    from models.errors import DataError

    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if ".jsonl" in name and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise DataError(path, None, "folder holds no *.jsonl* file")
        elif glob.has_magic(path):
            found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not found:
                raise DataError(path, None, "pattern matches no file")
        else:
            found = [path]
        files.extend(f for f in found if f not in files)
    return files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from features.text import PromptError
    from models.errors import PromptrouteError

    try:
        if getattr(args, "logs", None):
            args.logs = expand_logs(args.logs)
        return int(args.func(args) or 0)
    except (PromptrouteError, PromptError) as exc:
        _err(str(exc))
        return 2
    except json.JSONDecodeError as exc:
        _err(f"invalid JSON: {exc}")
        return 2
    except ValueError as exc:  # option validation (TrainOptions, split names)
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
