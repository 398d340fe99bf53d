"""Registry on a real database (SQLite and PostgreSQL): gate, promotion, rollback, lineage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from defectscan.errors import StoreError
from defectscan.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from defectscan.store import create_training_run, get_champion, get_model_version
from defectscan.synth import write_dataset
from defectscan.training import TrainConfig, train
from defectscan.training.registry import (
    evaluate_and_promote,
    promote,
    register_checkpoint,
    rollback,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained binary model, an untrained one of the same spec, and a holdout."""
    root = tmp_path_factory.mktemp("registry")
    data, holdout = root / "data", root / "holdout"
    kinds = ("spot", "stain")
    write_dataset(data, 24, seed=5, height=48, width=48, channels=1, binary=True, kinds=kinds)
    write_dataset(holdout, 8, seed=6, height=48, width=48, channels=1, binary=True, kinds=kinds)
    good = train(
        TrainConfig(
            data=data,
            out=root / "good.safetensors",
            tile_size=32,
            base_width=4,
            epochs=6,
            samples_per_epoch=64,
            lr=1e-2,
            val_fraction=0.2,
            patience=6,
        )
    )
    torch.manual_seed(0)
    spec = good.spec.replace(metrics={})
    bad_path = root / "bad.safetensors"
    save_checkpoint(build_model(spec), spec, bad_path)
    return {"good": good.checkpoint_path, "bad": bad_path, "holdout": holdout}


def _in_tx(sessions: sessionmaker[Session]) -> Callable[..., object]:
    def run(fn: Callable[[Session], object]) -> object:
        with sessions() as session, session.begin():
            return fn(session)

    return run


def test_first_model_through_the_gate_becomes_champion(
    db_sessions: sessionmaker[Session], models: dict[str, Path]
) -> None:
    tx = _in_tx(db_sessions)
    mv = tx(lambda s: register_checkpoint(models["good"], session=s).version)
    d = tx(lambda s: evaluate_and_promote(str(mv), session=s, holdout=models["holdout"]))
    assert d.promoted  # type: ignore[attr-defined]
    assert tx(lambda s: get_champion(session=s).version) == mv  # type: ignore[union-attr]


def test_worse_challenger_stays_candidate_and_better_one_is_promoted(
    db_sessions: sessionmaker[Session], models: dict[str, Path]
) -> None:
    tx = _in_tx(db_sessions)
    bad = str(tx(lambda s: register_checkpoint(models["bad"], session=s).version))
    good = str(tx(lambda s: register_checkpoint(models["good"], session=s).version))
    tx(lambda s: promote(bad, session=s))  # no champion yet: the operator may seed one
    # The good model challenges the untrained champion: it wins on the same holdout.
    d = tx(lambda s: evaluate_and_promote(good, session=s, holdout=models["holdout"], margin=0.05))
    assert d.promoted, d.reason  # type: ignore[attr-defined]
    assert d.challenger_score > d.champion_score + 0.05  # type: ignore[attr-defined]

    def statuses(s: Session) -> tuple[str, str]:
        return get_model_version(good, session=s).status, get_model_version(bad, session=s).status  # type: ignore[union-attr]

    assert tx(statuses) == ("champion", "retired")
    # Now a worse challenger (the untrained model, re-registered as candidate) must not win.
    tx(lambda s: get_model_version(bad, session=s).__setattr__("status", "candidate"))
    d2 = tx(lambda s: evaluate_and_promote(bad, session=s, holdout=models["holdout"]))
    assert not d2.promoted  # type: ignore[attr-defined]
    assert "stays a candidate" in d2.reason  # type: ignore[attr-defined]
    assert tx(statuses) == ("champion", "candidate")
    # Both holdout scores are on record, under the same holdout key.
    key = str(models["holdout"].resolve())
    rec = tx(lambda s: get_model_version(good, session=s).metrics["holdout"][key]["mean_iou"])  # type: ignore[union-attr]
    assert rec == pytest.approx(d2.champion_score)  # type: ignore[attr-defined]


def test_promote_without_holdout_needs_force_when_a_champion_exists(
    db_sessions: sessionmaker[Session], models: dict[str, Path]
) -> None:
    tx = _in_tx(db_sessions)
    good = str(tx(lambda s: register_checkpoint(models["good"], session=s).version))
    bad = str(tx(lambda s: register_checkpoint(models["bad"], session=s).version))
    tx(lambda s: promote(good, session=s))
    with pytest.raises(StoreError, match="needs a holdout"):
        tx(lambda s: promote(bad, session=s))
    assert tx(lambda s: get_champion(session=s).version) == good  # type: ignore[union-attr]
    tx(lambda s: promote(bad, session=s, force=True))
    assert tx(lambda s: get_champion(session=s).version) == bad  # type: ignore[union-attr]


def test_rollback_restores_the_previous_champion_and_does_not_flip_back(
    db_sessions: sessionmaker[Session], models: dict[str, Path]
) -> None:
    tx = _in_tx(db_sessions)
    good = str(tx(lambda s: register_checkpoint(models["good"], session=s).version))
    bad = str(tx(lambda s: register_checkpoint(models["bad"], session=s).version))
    with pytest.raises(StoreError, match="no champion"):
        tx(lambda s: rollback(session=s))
    tx(lambda s: promote(good, session=s))
    with pytest.raises(StoreError, match="nothing to roll back to"):
        tx(lambda s: rollback(session=s))
    tx(lambda s: promote(bad, session=s, force=True))  # a bad model slipped through
    old_new = tx(lambda s: tuple(mv.version for mv in rollback(session=s)))
    assert old_new == (bad, good)
    assert tx(lambda s: get_champion(session=s).version) == good  # type: ignore[union-attr]
    assert tx(lambda s: get_model_version(bad, session=s).status) == "retired"  # type: ignore[union-attr]
    # A second rollback must not bring the rolled-back model back.
    with pytest.raises(StoreError, match="nothing to roll back to"):
        tx(lambda s: rollback(session=s))


def test_every_version_records_lineage_and_metrics(
    db_sessions: sessionmaker[Session], models: dict[str, Path]
) -> None:
    tx = _in_tx(db_sessions)
    parent = str(tx(lambda s: register_checkpoint(models["bad"], session=s).version))
    run_id = tx(lambda s: create_training_run(session=s, trigger="operator").id)
    child = str(
        tx(
            lambda s: (
                register_checkpoint(
                    models["good"],
                    session=s,
                    parent_version=parent,
                    training_run_id=run_id,  # type: ignore[arg-type]
                ).version
            )
        )
    )
    ckpt = load_checkpoint(models["good"])

    def lineage(s: Session) -> tuple[object, ...]:
        mv = get_model_version(child, session=s)
        assert mv is not None
        return (
            mv.status,
            mv.parent.version if mv.parent else None,
            mv.training_run_id,
            mv.dataset_fingerprint,
            mv.metrics["mean_iou"],
            mv.sha256,
            mv.checkpoint_path,
        )

    status, par, run, fp, iou, sha, path = tx(lineage)  # type: ignore[misc]
    assert (status, par, run) == ("candidate", parent, run_id)
    assert fp == ckpt.spec.metrics["dataset_fingerprint"]
    assert iou == pytest.approx(ckpt.spec.metrics["mean_iou"])
    assert sha == ckpt.sha256
    assert path == str(models["good"].resolve())
    # Registering again is idempotent.
    again = tx(lambda s: register_checkpoint(models["good"], session=s).version)
    assert again == child
